"""The generic labelled-data loader and label matching: real files, clear one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED

from synth_middleware.cli import main
from synth_middleware.demos.classify.data import DataError, load_labelled, read_examples
from synth_middleware.demos.classify.task import ClassifyTask, LabelMatcher, baseline_prompt

HWU64 = SHARED / "data" / "hwu64"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[object]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_hwu64_loads_through_the_generic_loader() -> None:
    ds = load_labelled(HWU64 / "train.csv", HWU64 / "test.csv")
    assert ds.name == "hwu64"
    assert (len(ds.train), len(ds.test), len(ds.labels)) == (8954, 1076, 64)
    assert set(ds.labels) == set(json.loads((HWU64 / "categories.json").read_text()))
    assert ds.digests["train"].startswith("a67af84f")  # the SOURCE.md checksum
    assert ds.shuffled("train", 1) == ds.shuffled("train", 1) != ds.shuffled("train", 2)


def test_csv_with_custom_columns_quotes_newlines_and_any_label_strings(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_bytes(
        b'id,utterance,answer\r\n1,"two\r\nlines, a comma",yes\r\n2,"say ""hi""",no\r\n'
        b"3,  padded  ,Needs a human?\r\n"
    )
    test = _write(tmp_path / "test.csv", "id,utterance,answer\n9,hello,no\n")
    ds = load_labelled(train, test, text_col="utterance", label_col="answer", name="mine")
    assert [(e.text, e.label) for e in ds.train] == [
        ("two\r\nlines, a comma", "yes"),
        ('say "hi"', "no"),
        ("padded", "Needs a human?"),
    ]
    assert ds.labels == ("yes", "no", "Needs a human?") and ds.name == "mine"


def test_label_column_falls_back_to_category(tmp_path: Path) -> None:
    rows = read_examples(_write(tmp_path / "a.csv", "text,category\nhi,x\n"))
    assert rows[0].label == "x"


def test_jsonl_rows(tmp_path: Path) -> None:
    train = _jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "a", "label": "pos", "extra": 1},
            {"text": "b", "label": "neg"},
            {"text": "c", "label": 3},
        ],
    )
    test = _jsonl(tmp_path / "test.jsonl", [{"text": "d", "label": "neg"}])
    ds = load_labelled(train, test)
    assert ds.labels == ("pos", "neg", "3")


@pytest.mark.parametrize(
    ("train", "test", "kwargs", "match"),
    [
        (None, "text,label\na,x\n", {}, r"train\.csv: no such file"),
        ("", "text,label\na,x\n", {}, r"train\.csv: the file is empty"),
        ("text,label\n", "text,label\na,x\n", {}, r"train\.csv: no data rows"),
        ("text,label\na,x\nb,y\n", "", {}, r"test\.csv: the file is empty"),
        (
            "query,label\na,x\n",
            "text,label\na,x\n",
            {},
            r"train\.csv:1: no text column 'text'.*--text-col",
        ),
        (
            "text,label\na,x\n",
            "text,label\na,x\n",
            {"label_col": "intent"},
            r"no label column 'intent'",
        ),
        ("text,label\na,x\nb,x\n", "text,label\na,x\n", {}, r"only one label \('x'\)"),
        (
            "text,label\na,x\nb,y\n",
            "text,label\na,x\nc,z\nd,w\n",
            {},
            r"test\.csv: 2 label\(s\) never seen in train\.csv: 'z', 'w'",
        ),
        (
            "text,label\na,x\nb,y,extra\n",
            "text,label\na,x\n",
            {},
            r"train\.csv:3: 3 fields, expected 2",
        ),
        (
            'text,label\na,x\n"multi\nline",y\nc\n',
            "text,label\na,x\n",
            {},
            r"train\.csv:5: 1 fields",
        ),
        ("text,label\na,x\n ,y\n", "text,label\na,x\n", {}, r"train\.csv:3: the text is empty"),
        ("text,label\na,x\nb,\n", "text,label\na,x\n", {}, r"train\.csv:3: the label is empty"),
    ],
)
def test_bad_csv_files_get_a_clear_error(
    tmp_path: Path, train: str | None, test: str, kwargs: dict[str, str], match: str
) -> None:
    if train is not None:
        _write(tmp_path / "train.csv", train)
    _write(tmp_path / "test.csv", test)
    with pytest.raises(DataError, match=match) as info:
        load_labelled(tmp_path / "train.csv", tmp_path / "test.csv", **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            '{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n',
            r"train\.jsonl:3: not valid JSON",
        ),
        ('{"text": "a", "label": "x"}\n["b", "y"]\n', r"train\.jsonl:2: expected a JSON object"),
        (
            '{"text": "a", "label": "x"}\n{"text": "b"}\n',
            r"train\.jsonl:2: no label column 'label'",
        ),
        (
            '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n',
            r":2: the label must be a string",
        ),
    ],
)
def test_bad_jsonl_files_name_the_line(tmp_path: Path, lines: str, match: str) -> None:
    _write(tmp_path / "train.jsonl", lines)
    _jsonl(tmp_path / "test.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(DataError, match=match):
        load_labelled(tmp_path / "train.jsonl", tmp_path / "test.jsonl")


def test_the_cli_exits_2_with_one_line_for_bad_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "train.csv", "text,label\na,x\nb,x\n")
    _write(tmp_path / "test.csv", "text,label\na,x\n")
    code = main(
        [
            "demo",
            "classify",
            "--train",
            str(tmp_path / "train.csv"),
            "--test",
            str(tmp_path / "test.csv"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "demo classify: error:" in err and "only one label" in err


def test_label_matcher() -> None:
    m = LabelMatcher(
        ["yes", "no", "Needs a human?", "card_arrival", "card arrival time", "A-B", "a b"]
    )
    assert m.match("yes") == "yes" and m.match(" No. ") == "no" and m.match("`yes`") == "yes"
    assert m.match("needs a human") == "Needs a human?"
    assert m.match('{"label": "card_arrival"}') == "card_arrival"
    assert m.match('{"intent": "nothing"}') is None
    assert m.match("I think it is card arrival time.") == "card arrival time"  # longest phrase
    assert m.match("A-B") == "A-B" and m.match("a b") == "a b"  # exact wins over collisions
    assert m.match("a_b") is None  # ambiguous after normalisation: no guess
    assert m.match("maybe") is None


def test_generic_task_prompt_tool_and_reward() -> None:
    labels = ["yes", "no", "Needs a human?"]
    task = ClassifyTask(labels)
    assert task.system_prompt == baseline_prompt(labels)
    assert all(f"- {x}\n" in task.system_prompt + "\n" for x in labels)
    assert task.messages("is it on?")[1] == {"role": "user", "content": "Query: is it on?"}
    params = task.request_params()
    assert params["tools"][0]["function"]["parameters"]["properties"]["label"]["enum"] == labels
    call = {"tool_calls": [{"function": {"name": "classify", "arguments": '{"label": "no"}'}}]}
    pred = task.parse({"choices": [{"message": call}]})
    assert pred.label == "no" and task.reward(pred, "no") == 1.0 and task.reward(pred, "yes") == 0.0
    assert task.parse({"choices": [{"message": {"content": "Needs a human?"}}]}).label == labels[2]
    assert task.reward(task.parse({}), "no") == 0.0
    with pytest.raises(ValueError, match="two distinct labels"):
        ClassifyTask(["only"])


def test_tsv_and_json_array_files(tmp_path: Path) -> None:
    tsv = _write(tmp_path / "train.tsv", "label\ttext\nspam\tbuy now, cheap\nham\tsee you at 5\n")
    assert [(e.text, e.label) for e in read_examples(tsv)] == [
        ("buy now, cheap", "spam"),
        ("see you at 5", "ham"),
    ]
    arr = _write(
        tmp_path / "rows.json",
        json.dumps([{"text": "a\u2028b", "label": "x"}, {"text": "c", "label": "y"}]),
    )
    assert [e.label for e in read_examples(arr)] == ["x", "y"]
    bad = _write(tmp_path / "bad.json", json.dumps([{"text": "a", "label": "x"}, {"text": "b"}]))
    with pytest.raises(DataError, match=r"bad\.json: item 2: no label column"):
        read_examples(bad)
    line = json.dumps({"text": "a\u2028b", "label": "x"}, ensure_ascii=False)
    raw = _write(tmp_path / "raw.jsonl", line + "\n" + line + "\n")
    assert "\u2028" in raw.read_text(encoding="utf-8")
    assert read_examples(raw)[0].text == "a\u2028b"
