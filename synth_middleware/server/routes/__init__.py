"""The wire API's routes, one module per resource."""
