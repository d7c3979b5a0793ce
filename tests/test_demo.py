"""A short Banking77 demo run end to end, offline (stand-in model), both patterns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BANKING77_DIR

from synth_middleware.cli import main
from synth_middleware.demos.banking77.demo import DemoOptions, describe_candidate, run
from synth_middleware.demos.banking77.task import SYSTEM_PROMPT


@pytest.fixture(autouse=True)
def _restore_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo generates and exports ENVIRONMENT_API_KEY (as the reference does); undo it."""
    monkeypatch.setenv("ENVIRONMENT_API_KEY", "placeholder")
    monkeypatch.delenv("ENVIRONMENT_API_KEY")


def _check(results: dict, out: Path, stem: str, rollouts: int) -> None:
    assert results["model"]["standin"] is True
    assert "not an LLM" in results["model"]["label"]
    records = results["rollouts"]
    assert len(records) == rollouts
    assert all(r["reward"] in (0.0, 1.0) and r["error"] is None for r in records)
    assert all(r["candidate_id"] for r in records)
    ev = results["evaluation"]
    assert ev["test"]["baseline"]["n"] == 60 and ev["val"]["baseline"]["n"] == 5
    assert 0.2 < ev["test"]["baseline"]["accuracy"] < 0.7
    for name, entry in ev["test"].items():
        if name != "baseline":
            diff = entry["vs_baseline"]
            assert diff["ci95"][0] <= diff["diff"] <= diff["ci95"][1]
    saved = json.loads((out / f"{stem}.json").read_text())
    assert saved["session_id"] == results["session_id"]
    png = out / f"{stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_pattern_a(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    opts = DemoOptions(
        rollouts=80,
        train_size=60,
        val_size=5,
        min_proposal_rollouts=10,
        test_size=60,
        data_dir=str(BANKING77_DIR),
        out=str(tmp_path),
        standin_latency=0.1,
        progress=True,
        backend_url=None,
    )
    results = run(opts)
    _check(results, tmp_path, "banking77_seed0", 80)
    assert results["proposals"], "the optimizer proposed nothing in 80 rollouts"
    printed = capsys.readouterr().out
    assert "not an LLM" in printed and "+ proposal 1" in printed
    assert "diff vs baseline [95% CI]" in printed and "rollouts: 80/80" in printed
    served = {r["candidate_id"] for r in results["rollouts"]}
    assert len(served) >= 2  # candidates were served through the proxy


def test_demo_pattern_b_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "demo",
            "banking77",
            "--pattern",
            "b",
            "--rollouts",
            "40",
            "--train-size",
            "40",
            "--val-size",
            "5",
            "--min-proposal-rollouts",
            "10",
            "--test-size",
            "60",
            "--seed",
            "3",
            "--standin-latency",
            "0.05",
            "--data-dir",
            str(BANKING77_DIR),
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "banking77_seed3_b.json").read_text())
    _check(results, tmp_path, "banking77_seed3_b", 40)
    assert results["pattern"] == "b"
    assert "pattern B" in capsys.readouterr().out


def test_demo_refuses_a_real_model_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="OPENAI_API_KEY"):
        run(DemoOptions(model="gpt-4.1-nano", data_dir=str(BANKING77_DIR), rollouts=1))


def test_describe_candidate() -> None:
    text = f"{SYSTEM_PROMPT}\n\nHere are examples of good answers.\n\nExample 1:\nInput:\nq\nOutput:\nx"
    assert describe_candidate(text, None) == {
        "instruction": "the baseline instruction",
        "examples": 1,
        "new_instruction": False,
    }
    payload = {
        "example_injections": [
            {"examples": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        ],
        "text_replacements": [{"old_text": SYSTEM_PROMPT, "new_text": "Be precise."}],
    }
    desc = describe_candidate(None, payload)
    assert desc["examples"] == 1 and desc["new_instruction"] is True


def test_demo_with_a_named_model_goes_through_the_openai_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--model X`` uses OPENAI_BASE_URL/OPENAI_API_KEY for the policy (through the proxy),
    the evaluation and the proposer; a stand-in server plays the provider here."""
    from synth_middleware.demos.banking77 import data
    from synth_middleware.demos.banking77.standin import StandInModel

    labels = data.load(BANKING77_DIR).labels
    with StandInModel(labels, latency=0.05) as provider:
        monkeypatch.setenv("OPENAI_BASE_URL", provider.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
        results = run(
            DemoOptions(
                model="gpt-4.1-nano",
                rollouts=50,
                train_size=50,
                val_size=5,
                min_proposal_rollouts=10,
                test_size=60,
                data_dir=str(BANKING77_DIR),
                out=str(tmp_path),
                progress=False,
                plot=False,
            )
        )
        assert results["model"] == {
            "name": "gpt-4.1-nano",
            "label": "gpt-4.1-nano",
            "standin": False,
        }
        assert provider.counts["classifications"] >= 50 + 65  # rollouts + evaluation
        assert provider.counts["proposals"] >= 1  # the proposer used the same provider
