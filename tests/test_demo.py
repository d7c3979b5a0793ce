"""Short demo runs end to end, offline (stand-in model, real servers on loopback, real
OpenAI client, real SQLite): Banking77 and the generic task on HWU64, both patterns,
reproducibility by seed, the copy-baseline control, an external backend."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import BANKING77_DIR, SHARED

from synth_middleware.cli import main
from synth_middleware.demos.banking77.demo import DemoOptions, describe_candidate, run
from synth_middleware.demos.banking77.task import SYSTEM_PROMPT
from synth_middleware.demos.classify import demo as classify_demo
from synth_middleware.demos.classify.data import load_labelled
from synth_middleware.demos.classify.task import baseline_prompt

HWU64 = SHARED / "data" / "hwu64"


@pytest.fixture(autouse=True)
def _restore_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo generates and exports ENVIRONMENT_API_KEY (as the reference does); undo it."""
    monkeypatch.setenv("ENVIRONMENT_API_KEY", "placeholder")
    monkeypatch.delenv("ENVIRONMENT_API_KEY")


@pytest.fixture(scope="module")
def hwu64() -> Any:
    return load_labelled(HWU64 / "train.csv", HWU64 / "test.csv")


def _only_run(out: Path) -> Path:
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def _check(results: dict, rollouts: int, n_test: int) -> None:
    assert results["model"]["standin"] is True
    assert "not an LLM" in results["model"]["label"]
    records = results["rollouts"]
    assert len(records) == rollouts
    assert all(r["reward"] in (0.0, 1.0) and r["error"] is None for r in records)
    assert all(r["candidate_id"] for r in records)
    ev = results["evaluation"]
    assert ev["test"]["baseline"]["n"] == n_test
    for name, entry in ev["test"].items():
        if name != "baseline":
            assert name == "named best"
            assert entry["candidate_id"] == results["named_best"]["candidate_id"]
            diff = entry["vs_baseline"]
            assert diff["ci95"][0] <= diff["diff"] <= diff["ci95"][1]
    run_dir = Path(results["run_dir"])
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["session_id"] == results["session_id"]
    if results["options"]["plot"]:
        assert (run_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_banking77_pattern_a_lockstep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANKING77_DIR", str(BANKING77_DIR))  # data_dir left unset
    opts = DemoOptions(
        rollouts=80,
        train_size=60,
        val_size=5,
        min_proposal_rollouts=10,
        test_size=60,
        out=str(tmp_path),
        progress=True,
    )
    results = run(opts)
    _check(results, 80, 60)
    assert _only_run(tmp_path) == Path(results["run_dir"])
    assert Path(results["run_dir"]).name.startswith("banking77-")
    assert results["lockstep"] is True
    # not null with $BANKING77_DIR (recorded resolved: compare the same way)
    assert Path(results["options"]["data_dir"]).resolve() == Path(BANKING77_DIR).resolve()
    assert results["data"]["sources"]["train"] == str((BANKING77_DIR / "train.csv").resolve())
    assert results["proposals"], "the optimizer proposed nothing in 80 rollouts"
    printed = capsys.readouterr().out
    assert "\r" not in printed  # captured output: plain progress lines, no bar
    assert "not an LLM" in printed and "+ proposal 1" in printed and "rollouts: 80/80" in printed
    assert "Held-out test (60 queries never used online):" in printed
    assert f"Total {results['seconds']['total']:.1f}s" in printed  # the JSON's own figure
    served = {r["candidate_id"] for r in results["rollouts"]}
    assert len(served) >= 2  # candidates were served through the proxy


def test_banking77_pattern_b_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
    run_dir = _only_run(tmp_path)
    assert run_dir.name.endswith("-seed3-b")
    results = json.loads((run_dir / "results.json").read_text())
    _check(results, 40, 60)
    assert results["pattern"] == "b" and results["lockstep"] is False
    assert "pattern B" in capsys.readouterr().out


def test_classify_cli_on_hwu64_runs_the_generic_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "demo",
            "classify",
            "--train",
            str(HWU64 / "train.csv"),
            "--test",
            str(HWU64 / "test.csv"),
            "--rollouts",
            "60",
            "--train-size",
            "100",
            "--val-size",
            "0",
            "--min-proposal-rollouts",
            "15",
            "--test-size",
            "80",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--no-plot",
        ]
    )
    assert code == 0, capsys.readouterr().err
    run_dir = _only_run(tmp_path)
    assert run_dir.name.startswith("hwu64-") and not (run_dir / "plot.png").exists()
    results = json.loads((run_dir / "results.json").read_text())
    _check(results, 60, 80)
    assert results["baseline_prompt"] == baseline_prompt(results["data"]["labels"])
    assert len(results["data"]["labels"]) == 64
    # the reward's metadata carried the expected label (the container's details)
    assert all(r["expected"] in results["data"]["labels"] for r in results["rollouts"])
    assert "baseline prompt:" in capsys.readouterr().out


def _short(out: Path, seed: int, **kw: Any) -> classify_demo.DemoOptions:
    return classify_demo.DemoOptions(
        rollouts=90,
        train_size=150,
        val_size=0,
        min_proposal_rollouts=15,
        test_size=40,
        seed=seed,
        out=str(out),
        progress=False,
        plot=False,
        **kw,
    )


def _trajectory(results: dict) -> tuple[list, list]:
    names = {p["candidate_id"]: p["name"] for p in results["proposals"]}
    names[results["final_state"]["baseline_candidate_id"]] = "baseline"
    proposals = [(p["after_rollouts"], p["content"], p["payload"]) for p in results["proposals"]]
    served = [(r["seed"], names.get(r["candidate_id"]), r["reward"]) for r in results["rollouts"]]
    return proposals, served


def test_the_same_seed_gives_the_same_proposals_and_candidates(tmp_path: Path, hwu64: Any) -> None:
    a = classify_demo.run(_short(tmp_path, 7), hwu64, stream=io.StringIO())
    b = classify_demo.run(_short(tmp_path, 7), hwu64, stream=io.StringIO())
    c = classify_demo.run(_short(tmp_path, 8), hwu64, stream=io.StringIO())
    assert a["proposals"], "nothing proposed: the comparison would be empty"
    assert a["session_id"] != b["session_id"] and a["run_dir"] != b["run_dir"]
    assert _trajectory(a) == _trajectory(b)
    named = [[(p["after_rollouts"], p["name"]) for p in r["promotions"]] for r in (a, b)]
    assert named[0] == named[1]
    assert a["named_best"]["name"] == b["named_best"]["name"]
    for split in ("test",):
        for name, entry in a["evaluation"][split].items():
            assert entry["accuracy"] == b["evaluation"][split][name]["accuracy"]
    assert _trajectory(a) != _trajectory(c)
    assert len(list((tmp_path / "runs").iterdir())) == 3  # no run overwrote another


def test_copy_baseline_control_adds_exact_copies_only(tmp_path: Path, hwu64: Any) -> None:
    results = classify_demo.run(
        _short(tmp_path, 1, copy_baseline_proposals=True, copies=3),
        hwu64,
        stream=io.StringIO(),
    )
    assert Path(results["run_dir"]).name.endswith("-copy")
    assert results["copies_added_after_rollouts"] == [15, 30, 45]
    assert [p["name"] for p in results["proposals"]] == ["copy 1", "copy 2", "copy 3"]
    assert {p["content"] for p in results["proposals"]} == {results["baseline_prompt"]}
    test = results["evaluation"]["test"]
    if "named best" in test:  # a copy scores exactly as the baseline on held-out data
        assert test["named best"]["vs_baseline"]["diff"] == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _external_backend(tmp_path: Path, upstream: str | None) -> Any:
    from synth_middleware.engine import Engine, OptimizerOptions, SqliteStore
    from synth_middleware.offline.container import InProcessServer
    from synth_middleware.server import create_app

    engine = Engine(
        SqliteStore(str(tmp_path / "ext.db")), optimizer=OptimizerOptions(interval=0.05)
    )
    app = create_app(engine, upstream_url=upstream, dashboard=False)
    return engine, InProcessServer(app, lifespan="on", name="ext-backend")


def test_external_backend_without_upstream_fails_fast_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, server = _external_backend(tmp_path, None)
    with server as srv:
        code = main(
            [
                "demo",
                "classify",
                "--train",
                str(HWU64 / "train.csv"),
                "--test",
                str(HWU64 / "test.csv"),
                "--rollouts",
                "100",
                "--backend-url",
                srv.url,
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
    engine.close()
    captured = capsys.readouterr()
    assert code == 1
    assert "has no upstream model" in captured.err
    assert "--upstream-url http://127.0.0.1:8011/v1" in captured.err
    assert "--standin-port 8011" in captured.err
    assert "Running" not in captured.out  # stopped before any rollout
    assert "kept the baseline" not in captured.out + captured.err
    assert not list((tmp_path / "runs").iterdir())  # a failed run leaves no directory


def test_external_backend_with_the_standin_port_works(tmp_path: Path, hwu64: Any) -> None:
    port = _free_port()
    engine, server = _external_backend(tmp_path, f"http://127.0.0.1:{port}/v1")
    with server as srv:
        results = classify_demo.run(
            classify_demo.DemoOptions(
                rollouts=30,
                train_size=60,
                val_size=0,
                min_proposal_rollouts=10,
                test_size=30,
                backend_url=srv.url,
                standin_port=port,
                standin_latency=0.02,
                out=str(tmp_path),
                progress=False,
                plot=False,
            ),
            hwu64,
            stream=io.StringIO(),
        )
    if engine.optimizer is not None:
        engine.optimizer.stop()
    engine.close()
    _check(results, 30, 30)
    assert results["lockstep"] is False


def test_unknown_demo_flags_show_the_demos_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "banking77", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: synth-middleware demo banking77" in err and "--bogus" in err


def test_run_directories_never_collide(tmp_path: Path) -> None:
    dirs = {classify_demo.new_run_dir(tmp_path, "my data/x", 1) for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() and d.parent == tmp_path / "runs" for d in dirs)
    assert all(d.name.startswith("my_data_x-") for d in dirs)


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
    with StandInModel(labels, latency=0.0) as provider:
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


def test_classify_on_small_unseen_jsonl_data_with_default_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels that are plain words with spaces and punctuation, a file far smaller than the
    default budget's sizes: the defaults adapt and the run completes."""
    topics = {
        "yes": ["sure thing {}", "yes please {}", "absolutely, go ahead {}"],
        "no": ["no thanks {}", "please do not {}", "never do that {}"],
        "Needs a human?": ["let me talk to a person {}", "human agent please {}", "operator {}"],
    }
    rows = [
        {"text": t.format(i), "label": label}
        for i in range(12)
        for label, ts in topics.items()
        for t in ts
    ]
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:90]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[90:]))
    code = main(
        [
            "demo",
            "classify",
            "--train",
            str(train),
            "--test",
            str(test),
            "--name",
            "tiny",
            "--rollouts",
            "40",
            "--min-proposal-rollouts",
            "10",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--no-plot",
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((_only_run(tmp_path / "out") / "results.json").read_text())
    assert results["options"]["val_size"] == 18 and results["options"]["train_size"] == 72
    assert results["evaluation"]["test"]["baseline"]["n"] == len(rows) - 90
    assert results["data"]["labels"] == ["yes", "no", "Needs a human?"]


def test_external_backend_whose_upstream_is_down_fails_fast(tmp_path: Path, hwu64: Any) -> None:
    engine, server = _external_backend(tmp_path, f"http://127.0.0.1:{_free_port()}/v1")
    with server as srv, pytest.raises(classify_demo.DemoError, match="cannot reach its upstream"):
        classify_demo.run(
            classify_demo.DemoOptions(
                rollouts=10, backend_url=srv.url, out=str(tmp_path), progress=False, plot=False
            ),
            hwu64,
            stream=io.StringIO(),
        )
    engine.close()
