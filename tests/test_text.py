"""Text: a CSV of documents (``id, text, label[, split]``) is detected, tokenised on its training rows
only, searched, exported with its tokenizer, predicted from raw text (``cellsearch.load``, the pyfunc,
``predict``, MLflow serving) and from token ids (ONNX with the shipped ``tokenizer.json``), and
explained word by word; the TF-IDF reference and member are checked against their definitions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cellsearch
from cellsearch.data import read_dataset
from cellsearch.predict import transform

GOOD = ["great", "love", "delicious", "perfect", "tasty", "fresh", "best", "wonderful"]
BAD = ["awful", "stale", "bland", "broken", "worst", "soggy", "refund", "disappointing"]
FILLER = ["the", "this", "coffee", "bag", "was", "and", "it", "tea", "box", "i", "a", "snack", "my", "kids"]


def make_reviews(path: Path, n: int = 120, seed: int = 0, split: bool = False) -> Path:
    """Reviews whose label is whether their sentiment words are mostly good; lengths 4 to 40 words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        good = i % 2 == 0
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 36))))
        for _ in range(int(rng.integers(1, 4))):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(GOOD if good else BAD)))
        rows.append({"id": 1000 + i, "text": " ".join(words).capitalize() + ".", "label": "great" if good else "other"})
    df = pd.DataFrame(rows)
    if split:
        df["split"] = np.where(np.arange(n) < int(n * 0.75), "train", "test")
    df.to_csv(path, index=False)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellsearch.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_a_file_of_documents_is_read_as_text(tmp_path):
    csv = make_reviews(tmp_path / "reviews.csv")
    ds = read_dataset(csv)
    assert ds.info["layout"] == "text" and ds.task == "classification" and ds.preprocessing.features == ["text"]
    assert ds.info["text"]["column"] == "text" and ds.info["text"]["documents"] == 120
    assert ds.info["text"]["tokens"]["max"] >= ds.info["length"]["max"]
    # the ids the model reads are the tokenizer's, one channel, padding 0 after each end
    train = ds.splits["train"]
    assert train.x.shape[2] == 1 and (train.x[0, train.lengths[0]:] == 0).all()
    state = ds.preprocessing.encoders["text"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(state["tokenizer"])
    first_key = train.keys[0]
    doc = pd.read_csv(csv).set_index("id").loc[first_key, "text"]
    assert train.x[0, :train.lengths[0], 0].astype(int).tolist() == tok.encode(doc).ids
    # inspect shows it; --text-col names it
    res = _cli("inspect", str(csv), "--json", "--text-col", "text")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["layout"] == "text" and info["text"]["vocabulary"] == state["vocab"]


def test_the_tokenizer_learns_from_the_training_rows_only(tmp_path):
    csv = make_reviews(tmp_path / "reviews.csv", split=True)
    df = pd.read_csv(csv)
    test_row = df.index[df["split"] == "test"][0]
    df.loc[test_row, "text"] = "Zyxwvut жжж great."  # a word and characters only the test rows have
    df.to_csv(csv, index=False)
    ds = read_dataset(csv)
    state = ds.preprocessing.encoders["text"]
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(state["tokenizer"]).get_vocab()
    assert "zyxwvut" not in vocab and not any("ж" in piece for piece in vocab)
    test = ds.splits["test"]
    row = int(np.flatnonzero(test.keys == df.loc[test_row, "id"])[0])
    ids = test.x[row, :test.lengths[row], 0].astype(int).tolist()
    assert state["unk"] in ids  # the unseen characters read as unknown
    assert vocab["great"] in ids  # a training word is itself


def test_long_documents_keep_head_and_tail_and_empty_ones_a_token():
    from cellsearch.data.encoders.text import head_and_tail

    assert head_and_tail(list(range(10)), 20) == list(range(10))
    assert head_and_tail(list(range(100)), 8) == [0, 1] + list(range(94, 100))


@pytest.mark.parametrize("args, rows, message", [
    (["--text-col", "body"], None, "--text-col 'body' is not a column"),
    ([], "empty", "no text in the training rows"),
    (["--text-col", "text"], "no label", "no target column found"),
    (["--layout", "text"], "numbers", "no column of free text found"),
])
def test_bad_text_input_gets_one_line(tmp_path, args, rows, message):
    csv = make_reviews(tmp_path / "reviews.csv", n=20)
    df = pd.read_csv(csv)
    if rows == "empty":
        df["text"] = ""
        df.to_csv(csv, index=False)
        args = ["--text-col", "text"]
    elif rows == "no label":
        df[["id", "text"]].to_csv(csv, index=False)
    elif rows == "numbers":
        pd.DataFrame({"id": range(20), "x": np.arange(20.0), "label": ["a", "b"] * 10}).to_csv(csv, index=False)
    res = _cli("inspect", str(csv), *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr


def test_the_tfidf_member_is_scikit_learns_tfidf_of_pieces_and_pairs(tmp_path):
    """The member's features against scikit-learn's ``TfidfVectorizer(ngram_range=(1, 2),
    sublinear_tf=True)`` over the same pieces, on training documents and on new ones whose pieces and
    pairs the training documents never held (those weigh nothing, as outside scikit-learn's
    vocabulary; a member that hashed pairs into shared buckets gave them trained weights); its ONNX
    graph gives the same outputs."""
    import onnxruntime as ort
    from sklearn.feature_extraction.text import TfidfVectorizer

    from cellsearch.onnx_export import reference_onnx
    from cellsearch.refmembers import TfidfMember

    ds = read_dataset(make_reviews(tmp_path / "reviews.csv"), test_size=0.0)
    train = ds.splits["train"]
    member = TfidfMember.fit(train, "classification", 1, 2, ds.preprocessing)
    assert int((member.pair_keys >= 0).sum()) == len({(int(a), int(b)) for d in range(len(train.x))
                                                      for a, b in zip(train.x[d, :train.lengths[d] - 1, 0],
                                                                      train.x[d, 1:train.lengths[d], 0])})
    def docs(x, lengths):
        return [" ".join(str(int(i)) for i in x[d, :lengths[d], 0]) for d in range(len(x))]
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"\S+", lowercase=False)
    vec.fit(docs(train.x, train.lengths))
    new = transform(pd.DataFrame({"id": [1, 2], "text": ["Zesty quokka marmalade good.", "good bad good bad filler"]}),
                    ds.preprocessing, "new")
    width = max(train.x.shape[1], new.x.shape[1])
    def pad(a):
        return np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)))
    x, lengths = np.concatenate([pad(train.x[:5]), pad(new.x)]), np.concatenate([train.lengths[:5], new.lengths])
    want = vec.transform(docs(x, lengths))
    names = vec.get_feature_names_out()
    feats, w = member.features(torch.from_numpy(x), torch.from_numpy(lengths))
    slot_of = {int(k): s for s, k in enumerate(member.pair_keys.tolist()) if k >= 0}
    for d in range(len(x)):
        expected: dict[int, float] = {}
        for col, value in zip(want[d].indices, want[d].data):
            grams = [int(t) for t in names[col].split()]
            f = grams[0] if len(grams) == 1 else member.vocab + slot_of[grams[0] * member.vocab + grams[1]]
            expected[f] = value
        got: dict[int, float] = {}
        for f, v in zip(feats[d].tolist(), w[d].tolist()):
            got[f] = got.get(f, 0.0) + v
        got = {f: v for f, v in got.items() if v}
        assert set(got) == set(expected), d
        for f in expected:
            assert got[f] == pytest.approx(expected[f], rel=1e-4)
    unseen = [(a, b) for a, b in zip(new.x[0, :new.lengths[0] - 1, 0], new.x[0, 1:new.lengths[0], 0])
              if int(a) * member.vocab + int(b) not in slot_of]
    assert unseen  # the new document has pairs that no training document held, and they weigh nothing above
    # it learned the sentiment words: better than chance on its own training rows
    with torch.no_grad():
        out = member(torch.from_numpy(train.x), torch.from_numpy(train.lengths))
    assert (out.argmax(1).numpy() == train.y).mean() > 0.9
    member.temperature = 1.3
    with torch.no_grad():
        ref = member(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    sess = ort.InferenceSession(reference_onnx(member).SerializeToString())
    got = sess.run(None, {"x": x, "lengths": lengths.astype(np.int64)})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_the_table_of_pairs_holds_every_pair_at_one_of_its_two_slots():
    """The member's table of pairs (a cuckoo hash table): at a quarter full every pair sits at one of
    its two slots, each once; overfull, the most frequent pairs up to half the slots are placed and
    no others."""
    from cellsearch.refmembers import pair_slots, place_pairs

    rng = np.random.default_rng(0)
    vocab = 5000
    keys = np.unique(rng.integers(0, vocab * vocab, size=3000))
    for buckets in (1 << 14, 1 << 9):  # a quarter full; six times overfull
        df = rng.integers(1, 50, size=len(keys))
        table = place_pairs(keys, df, vocab, buckets)
        first, second = pair_slots(keys // vocab, keys % vocab, buckets)
        placed = table[table >= 0]
        assert len(set(placed.tolist())) == len(placed)
        found = (table[first] == keys) | (table[second] == keys)
        assert set(keys[found].tolist()) == set(placed.tolist())
        if buckets > 4 * len(keys):
            assert found.all()
        else:  # overfull: the more frequent half of the slots' worth is placed, nearly all of it
            top = np.lexsort((keys, -df))[:buckets // 2]
            assert found[top].mean() > 0.95 and found.sum() == found[top].sum()


def _char_model(ds, **params):
    """A small bidirectional GRU reading ``ds``'s documents as characters (``params`` override the layer's)."""
    from cellsearch.data.encoders import input_groups
    from cellsearch.model import InputSpec, ModelSpec, build
    from cellsearch.stack import LayerSpec

    ((name, width, layer),) = input_groups(ds.preprocessing, {"tokens": "chars", "embedding": 8})
    spec = ModelSpec(input_size=1, inputs=(InputSpec(name, width, {**layer, **params}),),
                     layers=(LayerSpec("gru", 6, True),), n_outputs=2, task="classification", pooling="mean")
    torch.manual_seed(0)
    return build(spec).eval()


def _spelled(tok, ids) -> str:
    """Pieces read back as text: ``##x`` continues a word, anything else starts one."""
    pieces = [tok.id_to_token(int(i)) for i in ids]
    return "".join(p[2:] if p.startswith("##") else " " + p for p in pieces)


def test_character_level_reads_each_piece_as_its_characters(tmp_path, monkeypatch):
    """``tokens: chars``: each document's steps are its pieces' characters (word starts kept), within
    the budget by head and tail; reading them again changes nothing; a model built where the
    character table is unknown refuses to run until its weights are loaded."""
    from cellsearch.data.encoders import text as text_encoder
    from cellsearch.data.encoders.text import load_tokenizer

    ds = read_dataset(make_reviews(tmp_path / "reviews.csv"), test_size=0.0)
    state, train = ds.preprocessing.encoders["text"], ds.splits["train"]
    tok = load_tokenizer(state)
    model = _char_model(ds)
    assert "/chars" in model.spec.arch
    n = 8
    x, lengths = torch.from_numpy(train.x[:n]), torch.from_numpy(train.lengths[:n].astype(np.int64))
    cx, cl = model.resequence(x, lengths)
    for d in range(n):
        chars = cx[d, :cl[d], 0].long().tolist()
        assert all(len(tok.id_to_token(c).removeprefix("##")) == 1 for c in chars)
        assert _spelled(tok, chars) == _spelled(tok, x[d, :lengths[d], 0].tolist())
        assert (cx[d, cl[d]:] == 0).all()
    again = model.resequence(cx, cl)
    assert torch.equal(again[0], cx) and torch.equal(again[1], cl)
    assert state["chars_per_piece"] > 1 and model.macs_per_sequence(20) > _char_model(ds, tokens="pieces"
                                                                                      ).macs_per_sequence(20)

    short = _char_model(ds, max_chars=12)
    sx, sl = short.resequence(x, lengths)
    for d in range(n):
        full = cx[d, :cl[d], 0].tolist()
        want = full if len(full) <= 12 else full[:3] + full[len(full) - 9:]
        assert sx[d, :sl[d], 0].tolist() == want

    from cellsearch.model import build

    monkeypatch.setattr(text_encoder, "_CHAR_TABLES", {})  # a process that never read this data
    fresh = build(model.spec).eval()
    with pytest.raises(RuntimeError, match="character table"):
        fresh(x, lengths)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        np.testing.assert_allclose(fresh(x, lengths).numpy(), model(x, lengths).numpy(), atol=1e-6)


def test_the_embedding_starts_from_cooccurrence_vectors_of_the_training_documents(tmp_path, monkeypatch):
    """Pieces used alike get vectors closer to each other than to pieces used otherwise; a word-piece
    model built after the data was read starts from them (its first ``embedding`` components, scaled);
    a character-level model, and one built where the documents were never read, start at random."""
    from cellsearch.data.encoders import input_groups
    from cellsearch.data.encoders import text as text_encoder
    from cellsearch.data.encoders.text import cooccurrence_vectors, load_tokenizer
    from cellsearch.model import InputSpec, ModelSpec, build
    from cellsearch.stack import LayerSpec

    rng = np.random.default_rng(0)
    docs = []
    for i in range(300):
        kind = GOOD if i % 2 == 0 else BAD  # "the tea was great and fresh" / "... awful and stale"
        a, b, c = rng.choice(kind, size=3, replace=False)
        docs.append({"text": f"{' '.join(rng.choice(FILLER, size=3))} was {a} {b} and {c} {rng.choice(FILLER)}",
                     "label": "great" if i % 2 == 0 else "other"})
    path = tmp_path / "pairs.csv"
    pd.DataFrame(docs).to_csv(path, index=False)
    ds = read_dataset(path, test_size=0.0)
    state, train = ds.preprocessing.encoders["text"], ds.splits["train"]
    vectors = cooccurrence_vectors(train.x, train.lengths, int(state["vocab"]))
    tok = load_tokenizer(state)
    good, bad = [vectors[tok.token_to_id(w)] for w in GOOD], [vectors[tok.token_to_id(w)] for w in BAD]
    same = np.mean([u @ v for k, u in enumerate(good) for v in good[k + 1:]] +
                   [u @ v for k, u in enumerate(bad) for v in bad[k + 1:]])
    other = np.mean([u @ v for u in good for v in bad])
    assert same > other + 0.3, (same, other)

    def model(tokens: str) -> torch.nn.Module:
        ((name, width, params),) = input_groups(ds.preprocessing, {"embedding": 8, "tokens": tokens})
        spec = ModelSpec(input_size=1, inputs=(InputSpec(name, width, params),), layers=(LayerSpec("gru", 4, False),),
                         n_outputs=2, task="classification")
        torch.manual_seed(0)
        return build(spec).inputs.layers[0].embed.weight.detach().numpy()

    def proportional(w: np.ndarray) -> bool:
        v = vectors[:len(w), :w.shape[1]]
        scale = (w * v).sum() / (v * v).sum()
        return bool(np.allclose(w, v * scale, atol=1e-5))

    assert proportional(model("pieces"))
    assert not proportional(model("chars"))
    monkeypatch.setattr(text_encoder, "_TRAINING_IDS", {})
    monkeypatch.setattr(text_encoder, "_VECTORS", {})
    assert not proportional(model("pieces"))  # never read here: random, until its weights are loaded


@pytest.mark.parametrize("tokens", ["pieces", "chars"])
def test_a_text_model_in_onnx_gives_the_same_outputs(tmp_path, tokens):
    """The ONNX graph of a text model, word pieces or characters (its own character split: the
    ``CumSum`` places, ``ScatterElements``, head and tail), against the model: documents of different
    lengths, one over the character budget, an empty one and ids beyond the tokenizer's."""
    import onnxruntime as ort

    from cellsearch.onnx_export import build_onnx

    ds = read_dataset(make_reviews(tmp_path / "reviews.csv"), test_size=0.0)
    train = ds.splits["train"]
    model = _char_model(ds, tokens=tokens, max_chars=40)
    order = np.argsort(train.lengths)
    pick = order[[0, 1, len(order) // 2, -1]]
    x, lengths = train.x[pick][:, :int(train.lengths[pick].max())].copy(), train.lengths[pick].astype(np.int64)
    x[0, :, 0], lengths[0] = 0, 1
    x[0, 0, 0] = ds.preprocessing.encoders["text"]["unk"]  # an empty document is one [UNK]
    x[1, 0, 0] = 10 ** 6                                  # an id the tokenizer never made
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    sess = ort.InferenceSession(build_onnx(model).SerializeToString())
    got = sess.run(None, {"x": x, "lengths": lengths})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_explain_traces_each_token_through_the_embedding_and_the_cell_equations():
    from cellsearch.explain import explain_sequences, word_effects
    from cellsearch.model import InputSpec, ModelSpec, build
    from cellsearch.stack import LayerSpec
    from tests.test_explain import PREP, _reference

    torch.manual_seed(0)
    spec = ModelSpec(input_size=1, inputs=(InputSpec("text", 1, {"vocab": 30, "embedding": 4, "unk": 1}),),
                     layers=(LayerSpec("gru", 3, False),), n_outputs=2, task="classification")
    model = build(spec).eval()
    ids = np.array([[[5], [7], [42], [3], [9]]], dtype=np.float32)  # 42: beyond the kept vocabulary
    labels = ["good", "tea", "zzz", "but", "stale"]
    (e,) = explain_sequences(model, PREP, ids, np.array([5]), np.array(["d1"]), labels=[labels])
    assert e.step_labels == labels
    embedded = model.inputs(torch.from_numpy(ids))[0].detach().double().numpy()
    np.testing.assert_allclose(embedded[2], model.inputs.layers[0].embed.weight[1].detach().numpy(), atol=1e-6)
    ref = _reference(model.stack.layers[0].fwd, embedded)
    for name, want in ref.items():
        np.testing.assert_allclose(e.layers[0].gates[name], want, atol=1e-5, err_msg=name)
    effects = word_effects(e.per_step, 0)
    np.testing.assert_allclose(effects[1:], np.diff(e.per_step[:, 0]), atol=1e-9)
    assert any(c.words for c in e.clamps[:3]) and all(w in " ".join(labels) for c in e.clamps for w, _ in c.words)


@pytest.mark.slow
def test_text_end_to_end_tune_export_predict_onnx_serve_explain(tmp_path):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from tests.conftest import http_json, serve_bundle, stop_process, wait_for_server

    csv = make_reviews(tmp_path / "reviews.csv", n=160, split=True)
    space = tmp_path / "space.yaml"
    space.write_text("sampler: random\nlayers:\n  depth: 1\n  cell: {type: categorical, choices: [gru, cifg]}\n"
                     "  hidden: 8\nembedding: {type: categorical, choices: [8, 16]}\n"
                     "vocab: {type: categorical, choices: [60, 5000]}\ntokens: chars\n"
                     "lr: 0.02\nbatch_size: 16\nmax_epochs: 3\npatience: 2\nmin_steps: 30\n")
    runs = tmp_path / "runs"
    res = _cli("tune", str(csv), "--space", str(space), "--trials", "3", "--run-dir", str(runs), "--cv", "2",
               "--workers", "1", "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    refs = result["references"]
    assert [r["arch"] for r in refs] == ["TF-IDF + linear"] and refs[0]["test_score"] > 0.8
    out = tmp_path / "model"
    res = _cli("export", "--run-dir", str(runs), "--out", str(out), "--format", "onnx")
    assert res.returncode == 0, res.stderr
    assert (out / "tokenizer.json").exists() and "tokenizer.json" in (out / "README.md").read_text()
    spec = json.loads((out / "spec.json").read_text())
    networks = [m["spec"] for m in spec["members"] if "spec" in m] if "members" in spec else [spec]
    assert all(s["inputs"][0]["encoder"] == "text" and s["inputs"][0]["params"]["embedding"] in (8, 16)
               and s["inputs"][0]["params"]["tokens"] == "chars" for s in networks)  # read as characters

    df = pd.read_csv(csv)
    new = df[df["split"] == "test"].drop(columns=["label", "split"]).head(6).copy()
    new.iloc[0, 1] = ""                                        # an empty document
    new.iloc[1, 1] = "Qwertyuiop fantastical " + "great " * 800  # unseen words; longer than the budget
    predictor = cellsearch.load(out)
    preds = predictor.predict(new)
    assert len(preds) == 6 and np.isfinite(preds.filter(like="prob_").to_numpy()).all()
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(str(out)).predict(new)
    np.testing.assert_allclose(pyfunc.filter(like="prob_").to_numpy(), preds.filter(like="prob_").to_numpy(),
                               atol=1e-6)
    new.to_csv(tmp_path / "new.csv", index=False)
    res = _cli("predict", str(out), str(tmp_path / "new.csv"))
    assert res.returncode == 0, res.stderr
    assert pd.read_csv(pd.io.common.StringIO(res.stdout))["prediction"].tolist() == preds["prediction"].tolist()

    # ONNX takes token ids, made with the shipped tokenizer.json as the card says
    state = json.loads((out / "preprocessing.json").read_text())["encoders"]["text"]
    budget, unk = state["max_tokens"], state["unk"]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = [e.ids for e in tok.encode_batch(new["text"].fillna("").tolist())]
    ids = [i if len(i) <= budget else i[:budget // 4] + i[len(i) - (budget - budget // 4):] for i in ids]
    ids = [i or [unk] for i in ids]
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    x = np.zeros((len(ids), lengths.max(), 1), dtype=np.float32)
    for k, i in enumerate(ids):
        x[k, :len(i), 0] = i
    sess = ort.InferenceSession(str(out / "model.onnx"))
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"x": x, "lengths": lengths})))
    probs = got.get("probabilities", np.exp(got[names[0]]))
    np.testing.assert_allclose(probs, preds.filter(like="prob_").to_numpy(), atol=1e-5)

    proc, url = serve_bundle(out)
    try:
        body = {"dataframe_split": new.to_dict(orient="split")}
        answer = pd.DataFrame(wait_for_server(lambda: http_json(url, body), proc)["predictions"])
        assert answer["prediction"].tolist() == preds["prediction"].tolist()
    finally:
        stop_process(proc)

    refit = tmp_path / "refit"
    res = _cli("export", "--run-dir", str(runs), "--out", str(refit), "--weights", "refit")
    assert res.returncode == 0, res.stderr
    assert np.isfinite(cellsearch.load(refit).predict(new).filter(like="prob_").to_numpy()).all()

    page = tmp_path / "explain.html"
    res = _cli("explain", str(out), str(csv), "--out", str(page))
    assert res.returncode == 0, res.stderr
    html = page.read_text()
    assert "Tokens, as the model reads them" in html and "Prediction if the text ended here" in html
    import re

    assert len(set(re.findall(r"##[a-z]\b", html))) >= 5  # the steps are characters: "great" is g ##r ##e ##a ##t


def test_length_buckets_cover_every_document_once_with_little_padding():
    from cellsearch.train import LengthBuckets

    rng = np.random.default_rng(0)
    lengths = torch.from_numpy(rng.lognormal(3.5, 0.9, size=1000).astype(np.int64) + 1)
    buckets = LengthBuckets(lengths, 32, torch.Generator().manual_seed(0))
    batches = list(buckets)
    assert len(batches) == len(buckets)
    assert sorted(i for b in batches for i in b) == list(range(1000))  # every document once per epoch

    def padded(bs):
        return sum(len(b) * int(lengths[b].max()) for b in bs) / int(lengths.sum())

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    plain = [shuffled[k:k + 32] for k in range(0, 1000, 32)]
    assert padded(batches) < 1.3 < padded(plain)  # steps run per real step
    again = list(LengthBuckets(lengths, 32, torch.Generator().manual_seed(0)))
    assert again == batches  # reproducible from the seed
    ordered = [i for b in LengthBuckets(lengths, 32) for i in b]  # validation: sorted by length
    assert (np.diff(lengths[ordered].numpy()) >= 0).all()


def test_character_level_is_offered_where_documents_are_short_enough():
    """The default space draws ``tokens: chars`` only where the character budget is at most
    ``MAX_CHAR_STEPS``; a space that fixes it gets it whatever the length."""
    import optuna

    from cellsearch.space import MAX_CHAR_STEPS, DataShape, SearchSpace, load_space

    space = load_space("default")
    keys = frozenset({"embedding", "vocab", "tokens"})
    for chars, want in ((MAX_CHAR_STEPS, {"pieces", "chars"}), (MAX_CHAR_STEPS + 1, {"pieces"})):
        shape = DataShape(length=60, task="classification", searched=keys, chars=chars)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        assert {space.suggest(study.ask(), shape)["tokens"] for _ in range(40)} == want
    fixed = SearchSpace(space.name, {**space.config, "tokens": "chars"})
    shape = DataShape(length=60, task="classification", searched=keys, chars=5 * MAX_CHAR_STEPS)
    assert fixed.suggest(optuna.create_study().ask(), shape)["tokens"] == "chars"


def test_another_process_reading_the_file_for_a_study_gets_the_studys_token_ids(tmp_path):
    """The tokenizer's trainer breaks ties differently from process to process; a process that reads
    the file for an existing study (a worker, ``export``) takes the study's fitted text state
    (``encoders.reuse_fitted``) and so the very ids its models were trained on."""
    csv = make_reviews(tmp_path / "reviews.csv", n=200)
    ds = read_dataset(csv, test_size=0.0, val_size=0.0)
    ds.preprocessing.save(tmp_path / "prep.json")
    np.save(tmp_path / "ids.npy", ds.splits["train"].x)
    code = f"""
import numpy as np
from cellsearch.data import Preprocessing, read_dataset
from cellsearch.data.encoders import reuse_fitted
saved = Preprocessing.load({str(tmp_path / 'prep.json')!r})
reuse_fitted(saved)
ds = read_dataset({str(csv)!r}, test_size=0.0, val_size=0.0)
assert ds.preprocessing.encoders["text"]["tokenizer"] == saved.encoders["text"]["tokenizer"]
assert np.array_equal(ds.splits["train"].x, np.load({str(tmp_path / 'ids.npy')!r}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
