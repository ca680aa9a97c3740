"""The full-scale loaders, run on small local files written here in each dataset's schema."""
import gzip
import json

import pytest

from fedalign_lite.data import hub
from fedalign_lite.errors import DataError


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_hh_rlhf_splits_the_shared_prompt(tmp_path):
    d = "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help.\n\nHuman: Please?\n\nAssistant:"
    f = _write(tmp_path / "hh.jsonl", [{"chosen": d + " No, sorry.", "rejected": d + " Sure, take a pin."}])
    assert hub.load_hh_rlhf(f) == [{"prompt": d, "chosen": " No, sorry.", "rejected": " Sure, take a pin."}]


def test_imdb_labels(tmp_path):
    f = _write(tmp_path / "imdb.jsonl", [{"text": "great", "label": 1}, {"text": "bad", "label": 0}])
    assert [r["label"] for r in hub.load_imdb(f)] == [1, 0]
    bad = _write(tmp_path / "bad.jsonl", [{"text": "x", "label": 3}])
    with pytest.raises(DataError, match="'label' must be 0 or 1"):
        hub.load_imdb(bad)


def test_global_opinions_parses_reprs_and_filters(tmp_path):
    rows = [
        {"question": "Q1?", "options": "['Yes', 'No']", "source": "GAS",
         "selections": "defaultdict(<class 'list'>, {'Japan': [0.2, 0.6], 'Nigeria': [0.5, 0.5]})"},
        {"question": "Q2?", "options": "['A', 'B']", "source": "WVS",
         "selections": "defaultdict(<class 'list'>, {'Japan': [0.0, 0.0]})"},   # all-zero: dropped
    ]
    out = hub.load_global_opinions(_write(tmp_path / "go.jsonl", rows))
    assert len(out) == 1 and out[0]["options"] == ["Yes", "No"]
    assert out[0]["selections"]["Japan"] == pytest.approx([0.25, 0.75])


def test_gsm8k_final_answer(tmp_path):
    f = _write(tmp_path / "gsm.jsonl", [{"question": "2+2?", "answer": "2+2=4\n#### 1,004"}])
    assert hub.load_gsm8k(f)[0]["answer"] == 1004.0


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        hub.load_imdb(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        hub.load_imdb(str(tmp_path / "empty.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "lab')
    with pytest.raises(DataError, match="malformed"):
        hub.load_imdb(str(tmp_path / "broken.jsonl"))
    with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]"):
        hub.load_imdb(_write(tmp_path / "nolabel.jsonl", [{"text": "a"}]))


def test_hh_rlhf_counts_and_warns_about_pairs_without_a_shared_prompt(tmp_path):
    d = "\n\nHuman: Hi\n\nAssistant:"
    other = "\n\nHuman: Hello there\n\nAssistant:"
    f = _write(tmp_path / "hh.jsonl", [{"chosen": d + " a", "rejected": d + " b"},
                                       {"chosen": d + " a", "rejected": other + " b"}])
    with pytest.warns(UserWarning, match="dropped 1 of 2 pairs"):
        assert len(hub.load_hh_rlhf(f)) == 1


def test_compressed_local_files_load_and_a_missing_one_is_a_data_error(tmp_path):
    rows = [{"text": "great", "label": 1}, {"text": "bad", "label": 0}]
    path = tmp_path / "imdb.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    assert hub.load_imdb(str(path)) == rows
    with pytest.raises(DataError, match="does not exist"):
        hub.load_imdb(str(tmp_path / "missing.jsonl.gz"))
    assert hub.local_format("x/test.csv.xz") == "csv" and hub.local_format("openai/gsm8k") is None
