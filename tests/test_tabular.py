"""bertsent.tabular: gzip known by bytes and by name, the BOM dropped, bad bytes named by line, rows in and
out, and the one ``{"label", "score"}`` formatter with its tie rule. No model, no torch."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from bertsent import tabular
from bertsent.errors import DataError


def test_gzip_is_known_by_name_and_by_bytes(tmp_path):
    assert tabular.split_gz("reviews.CSV.GZ") == ("reviews.CSV", True)
    assert tabular.split_gz("reviews.csv") == ("reviews.csv", False)
    packed, plain = tmp_path / "looks-plain.csv", tmp_path / "plain.csv"
    packed.write_bytes(gzip.compress(b"text\nhello\n"))
    plain.write_text("text\nhello\n")
    assert tabular.is_gzip(packed) and not tabular.is_gzip(plain)
    assert tabular.read_bytes(packed, "shown") == tabular.read_bytes(plain, "shown") == b"text\nhello\n"
    with tabular.open_text(packed, "utf-8") as f:
        assert f.read() == "text\nhello\n"
    cut = tmp_path / "cut.csv"
    cut.write_bytes(gzip.compress(b"text\n" * 1000)[:-12])
    with pytest.raises(DataError, match=r"^shown: not a readable gzip file \("):
        tabular.read_bytes(cut, "shown")


def test_a_utf8_bom_is_dropped_whatever_utf8_is_called(tmp_path):
    source = tmp_path / "bom.csv"
    source.write_bytes("\ufefftext,id\ncafé,1\n".encode())
    for spelling in ("utf-8", "UTF8", "utf_8"):
        assert tabular.text_encoding(spelling) == "utf-8-sig"
        assert tabular.decode(source.read_bytes(), "bom.csv", spelling) == "text,id\ncafé,1\n"
        table = tabular.open_input(source, encoding=spelling)
        assert table.columns == ["text", "id"] and list(table.rows) == [["café", "1"]]
    assert tabular.text_encoding("latin-1") == "latin-1"


def test_a_bad_byte_is_named_by_line_and_position():
    raw = "text\nok\ncaf\xe9\n".encode("latin-1")
    with pytest.raises(DataError, match=r"^f.csv line 3: not valid utf-8 \(byte 0xe9 at position 4\); pass --encoding"):
        tabular.decode(raw, "f.csv", "utf-8")
    assert tabular.decode(raw, "f.csv", "latin-1").splitlines()[2] == "café"


def test_rows_in_and_predictions_out(tmp_path):
    source = tmp_path / "in.jsonl.gz"
    records = [{"id": 1, "body": "good", "label": "x"}, {"id": 2, "body": "bad", "extra": [1, 2]}]
    source.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    assert tabular.input_format(source) == ".jsonl"
    table = tabular.open_input(source, text_column="body")
    assert table.columns == ["id", "text", "input_label", "extra"]
    rows = list(table.rows)
    assert rows == [[1, "good", "x", None], [2, "bad", None, [1, 2]]]
    predictions = [{"label": "positive", "score": 0.75}, {"label": "negative", "score": 0.5}]
    csv_text = tabular.format_predictions(".csv", table.columns, rows, predictions, header=True)
    assert csv_text.splitlines() == [
        "id,text,input_label,extra,label,score",
        "1,good,x,,positive,0.75",
        '2,bad,,"[1, 2]",negative,0.5',
    ]
    jsonl = tabular.format_predictions(".jsonl", table.columns, rows, predictions, header=False)
    assert [json.loads(line) for line in jsonl.splitlines()][1] == {
        "id": 2,
        "text": "bad",
        "input_label": None,
        "extra": [1, 2],
        "label": "negative",
        "score": 0.5,
    }
    assert tabular.read_texts(source, "body") == ["good", "bad"]
    with pytest.raises(DataError, match=r"unknown input format '.parquet.gz'"):
        tabular.input_format(tmp_path / "in.parquet.gz")


def test_rank_labels_breaks_ties_by_the_lower_label_id():
    labels = {i: f"L{i}" for i in range(20)}
    probs = np.tile(np.asarray([0.1, 0.3, 0.3, 0.1, 0.2], dtype=np.float32), 4)[None, :].repeat(2, axis=0)
    want = [f"L{i}" for i in sorted(range(20), key=lambda i: (-probs[0, i], i))]
    assert [[r["label"] for r in row] for row in tabular.rank_labels(probs, labels, None)] == [want, want]
    assert [r["label"] for r in tabular.rank_labels(probs, labels, 0)[0]] == want
    assert [r["label"] for r in tabular.rank_labels(probs, labels, 3)[1]] == want[:3]
    assert len(tabular.rank_labels(probs, labels, 99)[0]) == 20
    [[best]] = tabular.rank_labels(probs[:1], labels)
    assert best == {"label": labels[int(probs[0].argmax())], "score": pytest.approx(0.3)}
    assert tabular.rank_labels(np.zeros((0, 20), dtype=np.float32), labels, 2) == []
    with pytest.raises(ValueError, match="top_k"):
        tabular.rank_labels(probs, labels, -1)


def test_tabular_imports_no_torch():
    code = "import sys, bertsent.tabular, bertsent.data.loading; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
