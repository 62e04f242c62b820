"""checkpoint.py: what a checkpoint holds, and every kind of file that must be refused before or
after unpickling (crafted ones built here, never committed), through the real command lines."""
import io
import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

import checkpoint
import evaluate
import model
import train
from conftest import ROOT, main_error, peak_memory


@pytest.fixture()
def good(trained, tmp_path):
    """A copy of a real two-epoch checkpoint, and the dict in it."""
    out, _ = trained
    path = tmp_path / "good.pt"
    path.write_bytes((out / "model.pt").read_bytes())
    return path, torch.load(path, weights_only=True)


def saved(tmp_path, name, ckpt):
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def with_pickle(good_path, pickle_bytes, out):
    """The good checkpoint's archive with its data.pkl replaced."""
    with zipfile.ZipFile(good_path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, pickle_bytes if info.filename.endswith("/data.pkl") else src.read(info))
    return out


class Call:
    """Unpickling this calls fn(*args): what a crafted checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_round_trip_and_what_it_holds(good):
    path, ckpt = good
    loaded = checkpoint.load(str(path))
    assert set(loaded) == {"model", "arch", "optimizer", "generator", "config", "epoch", "history"}
    net = checkpoint.model_from(loaded, str(path))
    reference = model.Net()
    reference.load_state_dict(ckpt["model"])
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(net(x), reference(x))


@pytest.mark.slow  # a process of its own
def test_memory_bombs_are_refused_before_unpickling(good, tmp_path):
    path, ckpt = good
    bomb = with_pickle(path, pickle.dumps({"model": Call(bytearray, 2_000_000_000)}, protocol=2), tmp_path / "b.pt")
    inflating = tmp_path / "inflating.pt"  # a 300 MB record, deflated to a few hundred KB
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(inflating, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with dst.open(info.filename, "w") as f:
                f.write(src.read(info))
                if info.filename.endswith("data/0"):
                    for _ in range(300):
                        f.write(bytes(2**20))
    assert os.path.getsize(inflating) < 2 * 2**20
    huge = tmp_path / "huge.pt"
    with open(huge, "wb") as f:
        f.truncate(checkpoint.MAX_BYTES + 1)  # sparse: large, and nothing on disk
    # One process: its peak memory after a plain refusal (the baseline), then after each crafted file.
    (baseline, _), *rest = peak_memory("evaluate.py", [tmp_path / "missing.pt"], [bomb], [inflating], [huge])
    messages = ("refused, it would call __builtin__.bytearray, and loading it could run that code",
                "refused, its archive holds entries that torch.save does not write",
                "larger than any checkpoint train.py writes")
    for (peak, said), message in zip(rest, messages):
        assert message in said and peak - baseline < 100, (said, peak, baseline)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(fake_mnist, tmp_path):
    marker = tmp_path / "pwned"
    payload = {"model": Call(os.system, f"touch {marker}"), "config": {}, "epoch": 1, "history": []}
    zipped = saved(tmp_path, "evil.pt", payload)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(payload))  # the legacy, plain-pickle format
    line = main_error(evaluate, zipped, "--data-dir", fake_mnist)
    assert f"refused, it would call {os.system.__module__}.system, and loading it could run that code" in line
    for path in (zipped, tmp_path / "evil.pkl"):
        assert "could run that code" in main_error(evaluate, path, "--data-dir", fake_mnist)
        assert "could run that code" in main_error(train, "--resume", path, "--data-dir", fake_mnist, "--epochs", 3)
    assert not marker.exists()
    pickle.loads((tmp_path / "evil.pkl").read_bytes())  # plain unpickling does run it
    assert marker.exists()


def test_unreadable_files_are_not_called_unsafe(good, fake_mnist, tmp_path):
    path, _ = good
    files = {"empty.pt": b"", "truncated.pt": path.read_bytes()[: path.stat().st_size // 2],
             "random.pt": torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8).numpy().tobytes(),
             "README.md": open(os.path.join(ROOT, "README.md"), "rb").read()}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        line = main_error(evaluate, tmp_path / name, "--data-dir", fake_mnist, "--no-plots")
        assert "not a checkpoint" in line or "not a readable checkpoint" in line, line
        assert "could run" not in line and "refused" not in line, line
        assert (tmp_path / name).read_bytes() == content


def test_folders_images_and_missing_files_say_what_they_are(good, fake_mnist, tmp_path):
    path, _ = good
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(path.read_bytes())
    assert f"is a folder, not a checkpoint file: pass {tmp_path / 'run' / 'model.pt'}" in main_error(
        evaluate, tmp_path / "run", "--data-dir", fake_mnist)
    png = os.path.join(ROOT, "docs", "example_seven.png")
    assert "is an image, not a checkpoint: pass images after --image" in main_error(evaluate, png)
    assert "no such checkpoint file" in main_error(evaluate, tmp_path / "nothing.pt")
    line = main_error(evaluate, "--image", png, tmp_path / "run" / "model.pt")
    assert "looks like a checkpoint: name it before --image" in line


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.update(epoch="3"), "no 'epoch' of type int"),
    (lambda c: c.update(epoch=True), "no 'epoch' of type int"),
    (lambda c: c.update(epoch=5), "epoch 5 with 2 history entries"),
    (lambda c: c.update(epoch=0, history=[]), "epoch 0 with 0 history entries"),
    (lambda c: c.update(history={"epoch": 1}), "no 'history' of type list"),
    (lambda c: c["history"][1].pop("test_acc"), "history entry 2 is incomplete"),
    (lambda c: c["history"][0].update(epoch=7), "history entry 1 is incomplete"),
    (lambda c: c["config"].pop("lr"), "config has no 'lr'"),
    (lambda c: c["model"].update(extra=[1, 2]), "'model' holds more than tensors"),
])
def test_edited_structures_are_refused_on_load(good, fake_mnist, tmp_path, damage, message):
    _, ckpt = good
    damage(ckpt)
    path = saved(tmp_path, "edited.pt", ckpt)
    for module, args in ((evaluate, [path, "--no-plots"]), (train, ["--resume", path, "--epochs", 9])):
        line = main_error(module, *args, "--data-dir", fake_mnist)
        assert "not a checkpoint of this train.py" in line and message in line, line
    assert not (tmp_path / "history.json").exists()


def test_optimizer_state_is_needed_to_resume_only(good, fake_mnist, tmp_path, capsys):
    _, ckpt = good
    no_optimizer = saved(tmp_path, "no_optimizer.pt", {k: v for k, v in ckpt.items() if k != "optimizer"})
    evaluate.main([str(no_optimizer), "--data-dir", fake_mnist, "--no-plots"])
    assert "test accuracy: " in capsys.readouterr().out
    ckpt["optimizer"]["param_groups"][0]["lr"] = "fast"
    malformed = saved(tmp_path, "malformed.pt", ckpt)
    for path in (no_optimizer, malformed):
        line = main_error(train, "--resume", path, "--epochs", 5, "--data-dir", fake_mnist)
        assert "has no usable optimizer or generator state to resume from" in line
        assert not (tmp_path / "history.json").exists()


def test_non_finite_weights_are_refused(good, fake_mnist, tmp_path):
    _, ckpt = good
    ckpt["model"]["fc2.bias"][3] = float("nan")
    path = saved(tmp_path, "nan.pt", ckpt)
    png = os.path.join(ROOT, "docs", "example_seven.png")
    for args in ([path, "--data-dir", fake_mnist], [path, "--image", png]):
        assert "weights hold NaN or infinite values" in main_error(evaluate, *args)


def test_old_runs_stay_usable_after_model_py_changes(good, fake_mnist, monkeypatch, capsys, tmp_path):
    path, _ = good
    evaluate.main([str(path), "--data-dir", fake_mnist, "--no-plots", "--device", "cpu"])
    before = capsys.readouterr().out.splitlines()
    monkeypatch.setattr(model.Net.__init__, "__defaults__", (128, nn.ReLU))  # HIDDEN = 128, ACTIVATION = nn.ReLU
    evaluate.main([str(path), "--data-dir", fake_mnist, "--no-plots", "--device", "cpu"])
    after = capsys.readouterr().out.splitlines()
    assert after[0] == (f"checkpoint {path}: 784-64-10 sigmoid (model.py now builds 784-128-10 relu), epoch 2, "
                        "device cpu")
    assert after[1:] == before[1:]  # the same network as before the edit, the same report
    line = main_error(train, "--resume", path, "--epochs", 5, "--data-dir", fake_mnist)
    assert "holds a 784-64-10 sigmoid network, but model.py now builds 784-128-10 relu: a run goes on with" in line
    assert "undo the edit to model.py" in line and not (tmp_path / "history.json").exists()
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path / "runs"))
    train.main(["--data-dir", fake_mnist, "--epochs", "1", "--no-plots", "--device", "cpu"])
    assert os.listdir(tmp_path / "runs") == ["h128-relu-lr0.01-bs64"]  # the network is in the name

    class Deeper(model.Net):  # a layer added: model.py cannot build the old network any more
        def __init__(self, hidden=64, activation=nn.Sigmoid):
            super().__init__(hidden, activation)
            self.fc0 = nn.Linear(784, 784)

    monkeypatch.setattr(checkpoint, "Net", Deeper)
    line = main_error(evaluate, path, "--data-dir", fake_mnist)
    assert "holds a 784-64-10 sigmoid network, which model.py no longer builds" in line
    assert "git checkout COMMIT -- model.py" in line


def test_unsafe_global_reads_the_pickle_without_running_it():
    assert checkpoint.unsafe_global(pickle.dumps({"a": [1, 2.0, "x"]}, protocol=2)) is None
    assert checkpoint.unsafe_global(pickle.dumps(Call(print, "hi"), protocol=2)) == "__builtin__.print"
    assert checkpoint.unsafe_global(pickle.dumps(Call(print, "hi"), protocol=4)) == "an object through STACK_GLOBAL"
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2), "g": torch.Generator().get_state(), "i": torch.arange(3)}, buffer)
    with zipfile.ZipFile(buffer) as z:
        assert checkpoint.unsafe_global(z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])) is None


def test_damage_and_outsized_or_odd_contents_are_refused_quickly(good, fake_mnist, tmp_path):
    path, ckpt = good
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:  # one flipped byte inside the weights' record
        weights = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    data[weights.header_offset + 30 + len(weights.filename) + weights.extra.__len__() + 100] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    assert "not a readable checkpoint, damaged" in main_error(evaluate, tmp_path / "flipped.pt")
    entry = dict(ckpt["history"][-1])
    long = dict(ckpt, epoch=15_000, history=[dict(entry, epoch=i) for i in range(1, 15_001)])
    line = main_error(evaluate, saved(tmp_path, "long.pt", long), "--data-dir", fake_mnist)
    assert "refused, its history is far longer than train.py writes" in line  # before reading it
    for bad, message in ((dict(ckpt, history=[dict(h, test_acc=10**400) for h in ckpt["history"]]),
                          "history entry 1 is incomplete"),
                         (dict(ckpt, arch="784-64-10 sigmoid\x1b[2J"), r"'784-64-10 sigmoid\x1b[2J'"),
                         (dict(ckpt, config=dict(ckpt["config"], loader="fast\n")), r"'fast\n'")):
        line = main_error(evaluate, saved(tmp_path, "bad.pt", bad), "--data-dir", fake_mnist)
        assert message in line and "\x1b" not in line, line


def test_what_only_weights_only_loading_refuses_is_refused(good, fake_mnist, tmp_path):
    path, _ = good
    with zipfile.ZipFile(path) as z:
        pickle_bytes = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    # NONE BUILD before STOP: "set the state None on the dict". Plain unpickling does nothing with it;
    # torch.load(weights_only=True) refuses it. The pre-check looks at globals, and lets it through:
    # it stands for all the pre-check does not see, which only weights_only=True keeps out.
    pickle_bytes = pickle_bytes[:-1] + pickle.NONE + pickle.BUILD + pickle.STOP
    assert checkpoint.unsafe_global(pickle_bytes) is None
    built = with_pickle(path, pickle_bytes, tmp_path / "built.pt")
    assert set(torch.load(built, weights_only=False)) == set(torch.load(path, weights_only=True))
    line = main_error(evaluate, built, "--data-dir", fake_mnist, "--no-plots")
    assert "not a readable checkpoint, damaged or truncated (UnpicklingError)" in line, line


def test_compressed_entries_are_refused_however_small(good, fake_mnist, tmp_path):
    path, _ = good
    deflated = tmp_path / "deflated.pt"  # torch.save stores its entries; this one deflates them
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert os.path.getsize(deflated) < os.path.getsize(path) < checkpoint.MAX_BYTES
    line = main_error(evaluate, deflated, "--data-dir", fake_mnist, "--no-plots")
    assert "refused, its archive holds entries that torch.save does not write" in line, line
