"""checkpoint.py: what a checkpoint holds, and every kind of file that must be refused before or
after unpickling (crafted ones built here, never committed), through the real command lines."""
import functools
import io
import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

from machinery import checkpoint
from machinery import cli
import evaluate
import model
import train
from conftest import ROOT, main_error, peak_memory, run_script


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
    assert set(loaded) == {"model", "arch", "optimizer", "generator", "rng", "config", "epoch", "history"}
    assert loaded["arch"] == str(model.Net())  # what print(model) shows
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
    one_float = torch.zeros(1)  # 4 bytes on disk, claiming 1,000,000 x 784 floats: 3 GB once used
    strided = saved(tmp_path, "strided.pt", dict(ckpt, model=dict(ckpt["model"], **{
        "fc1.weight": one_float.expand(1_000_000, 784), "fc1.bias": one_float.expand(1_000_000),
        "fc2.weight": one_float.expand(10, 1_000_000)}), arch="784-1000000-10 sigmoid"))
    assert os.path.getsize(strided) < 200_000
    # One process: its peak memory after a plain refusal (the baseline), then after each crafted file.
    (baseline, _), *rest = peak_memory("evaluate.py", [tmp_path / "missing.pt"], [bomb], [inflating], [huge],
                                       [strided])
    messages = ("refused, it would call __builtin__.bytearray, and loading it could run that code",
                "refused, its archive holds entries that torch.save does not write",
                "larger than any checkpoint train.py writes",
                "(model fc1.weight a tensor claiming more elements than its storage holds)")
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


# Values no field accepts: wrong types, control characters, numbers out of every range or not finite.
HOSTILE = [None, True, "3\n", "\x1b[2J\x1b[31merror: fake", [1], {}, (1,), -1, 10**400, 1e308, -1e308,
           float("nan"), float("inf"), torch.zeros(3), torch.tensor(5)]


def hostile_variants(ckpt):
    """(where, checkpoint) with one field of the description set to a hostile value, for every field and
    kind: each top-level key, each config field, each field of a history entry, keys that are not text."""
    for key in checkpoint.DESCRIPTION:
        for value in HOSTILE:
            if not (key == "arch" and value == "3\n"):  # print(model) has newlines: a text, then refused by model.py
                yield key, dict(ckpt, **{key: value})
    for key in checkpoint.CONFIG:
        for value in HOSTILE + ["a" * 5000] + (["cuda:99999"] if key == "device" else []):
            yield f"config {key}", dict(ckpt, config=dict(ckpt["config"], **{key: value}))
    for key in checkpoint.HISTORY_ENTRY:
        for value in HOSTILE:
            yield f"history {key}", dict(ckpt, history=[dict(ckpt["history"][0], **{key: value}), ckpt["history"][1]])
    for key in (("a", "tuple"), 7):
        yield f"top key {key!r}", {**ckpt, key: 1}
        yield f"config key {key!r}", dict(ckpt, config={**ckpt["config"], key: 1})
        yield f"history key {key!r}", dict(ckpt, history=[{**ckpt["history"][0], key: 1}, ckpt["history"][1]])
    for key in checkpoint.REQUIRED:
        yield f"without {key}", {k: v for k, v in ckpt.items() if k != key}
    for key in checkpoint.REQUIRED_CONFIG:
        yield f"without config {key}", dict(ckpt, config={k: v for k, v in ckpt["config"].items() if k != key})
    for key in checkpoint.REQUIRED_ENTRY:
        yield f"without history {key}", dict(ckpt, history=[{k: v for k, v in h.items() if k != key}
                                                             for h in ckpt["history"]])


def bad_tensors(t):
    """A tensor's hostile forms: a stride-0 view claiming 150 million elements, a NaN (an infinity may be a
    mask's: the network's outputs are checked for it)."""
    yield "stride 0", t.flatten()[:1].expand(200_000, 784)
    if t.is_floating_point():
        yield "NaN", t.clone().flatten().index_fill(0, torch.tensor([0]), float("nan")).view(t.shape)


def with_metadata(state, metadata, **attributes):
    """A copy of a state dict with _metadata (and any other attribute) as given."""
    copy = type(state)(state)
    copy._metadata = metadata
    copy.__dict__.update(attributes)
    return copy


def optimizer_crafts(optimizer):
    """What no torch optimizer writes: groups or state of the wrong kind, numbering or values."""
    group = optimizer["param_groups"][0]
    yield "no state", {"param_groups": optimizer["param_groups"]}
    yield "an extra key", dict(optimizer, extra=1)
    yield "groups not a list", dict(optimizer, param_groups=group)
    yield "no groups", dict(optimizer, param_groups=[])
    yield "a group not a dict", dict(optimizer, param_groups=[[1, 2]])
    yield "params not numbered", dict(optimizer, param_groups=[dict(group, params=[0, 0, 5, 9])])
    yield "params not ints", dict(optimizer, param_groups=[dict(group, params=["a"])])
    yield "lr NaN", dict(optimizer, param_groups=[dict(group, lr=float("nan"))])
    yield "lr negative", dict(optimizer, param_groups=[dict(group, lr=-0.1)])
    yield "lr of three", dict(optimizer, param_groups=[dict(group, lr=torch.ones(3))])
    yield "lr of 200 bits", dict(optimizer, param_groups=[dict(group, lr=2**200)])
    yield "lr text", dict(optimizer, param_groups=[dict(group, lr="0.1")])
    yield "state by name", dict(optimizer, state={"fc1.weight": {}})
    yield "state out of range", dict(optimizer, state={99: {}})
    yield "state not a dict", dict(optimizer, state={0: [1]})
    yield "state NaN", dict(optimizer, state={0: {"momentum_buffer": torch.tensor([float("nan")])}})
    yield "state stride 0", dict(optimizer, state={0: {"momentum_buffer": torch.zeros(1).expand(10**8)}})


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def test_every_field_of_the_description_refuses_every_kind_of_hostile_value(good, tmp_path):
    """The one gate: each field of checkpoint.DESCRIPTION (top level, config, history entries, the state
    dicts' tensors and _metadata, the optimizer's groups and state, a learner's own key), set to a hostile
    value of each kind, is refused by load() in one printable line, before any network is built."""
    path, ckpt = good
    variants = list(hostile_variants(ckpt))
    for key, t in ckpt["model"].items():
        variants += [(f"model {key} {kind}", dict(ckpt, model=dict(ckpt["model"], **{key: bad})))
                     for kind, bad in bad_tensors(t)]
    variants += [(f"generator {kind}", dict(ckpt, generator=bad)) for kind, bad in bad_tensors(ckpt["generator"])]
    variants += [("generator zeros", dict(ckpt, generator=torch.zeros_like(ckpt["generator"]))),
                 ("generator 0xFF", dict(ckpt, generator=torch.full_like(ckpt["generator"], 255))),
                 ("generator integers", dict(ckpt, generator=ckpt["generator"].long())),
                 ("rng zeros", dict(ckpt, rng=torch.zeros_like(ckpt["rng"]))),
                 ("history with a tensor", dict(ckpt, history=[dict(h, seconds=torch.tensor(1.0))
                                                               for h in ckpt["history"]]))]
    state = ckpt["model"]
    variants += [(f"_metadata {kind}", dict(ckpt, model=with_metadata(state, metadata, **extra)))
                 for kind, metadata, extra in (("a list", [1], {}), ("a text", "x", {}),
                                               ("version text", {"": {"version": "2"}}, {}),
                                               ("version negative", {"": {"version": -1}}, {}),
                                               ("prefix a number", {1: {"version": 1}}, {}),
                                               ("entry a list", {"fc1": [1]}, {}),
                                               ("another attribute", {}, {"_hooks": 1}))]
    variants += [(f"optimizer {kind}", dict(ckpt, optimizer=bad)) for kind, bad in optimizer_crafts(ckpt["optimizer"])]
    variants += [("own key nested 100 deep", dict(ckpt, note=nested(100))),
                 ("own key a long text", dict(ckpt, note="a" * 200_000)),
                 ("own key a huge number", dict(ckpt, note=10**400)),
                 ("own key a stride-0 tensor", dict(ckpt, ema=torch.zeros(1).expand(10**8))),
                 ("own key a dict keyed by a tensor", dict(ckpt, note={torch.zeros(1): 1}))]
    assert len(variants) > 300
    for where, bad in variants:
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(cli.UserError) as e:
            checkpoint.load(str(tmp_path / "bad.pt"))
        said = str(e.value)
        assert "not a checkpoint of this train.py" in said or "not a readable checkpoint" in said, (where, said)
        assert said.isprintable() and "\n" not in said, (where, said)
    assert checkpoint.load(str(path))["epoch"] == 2  # the untouched one passes


def learner_edits(ckpt):
    """(what, checkpoint) as train.py writes it after an edit a learner makes: other optimizers and their
    state, a scheduler, BatchNorm's counters, other dtypes, keys of their own. Each must load."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Dropout(0.2), nn.Linear(4 * 13 * 13, 10))
    net(torch.rand(8, 1, 28, 28)).sum().backward()
    for name, build in (("SGD momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                                    weight_decay=1e-4)),
                        ("Adam", lambda p: torch.optim.Adam(p, lr=1e-3)), ("AdamW", torch.optim.AdamW),
                        ("RMSprop", lambda p: torch.optim.RMSprop(p, lr=1e-3)),
                        ("Adagrad", torch.optim.Adagrad)):
        optimizer = build(net.parameters())
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 3)
        optimizer.step()
        scheduler.step()
        yield name, dict(ckpt, model=net.state_dict(), arch=str(net), optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict())
    deep = nn.Sequential(*[nn.Linear(784 if i == 0 else 16, 16 if i < 5 else 10) for i in range(6)])  # 12 tensors
    deep_adam = torch.optim.Adam(deep.parameters())
    deep(torch.rand(2, 784)).sum().backward()
    deep_adam.step()
    yield "12 parameters, numbered past 9", dict(ckpt, model=deep.state_dict(), arch=str(deep),
                                                 optimizer=deep_adam.state_dict())
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD(net.parameters(), lr=0.1))  # inf in it
    yield "ReduceLROnPlateau", dict(ckpt, scheduler=plateau.state_dict())
    cycle = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), 0.1, 10)
    yield "OneCycleLR", dict(ckpt, scheduler=cycle.state_dict())
    yield "float64 weights", dict(ckpt, model={k: v.double() for k, v in ckpt["model"].items()})
    yield "a transposed weight", dict(ckpt, model=dict(ckpt["model"], **{"fc2.weight": ckpt["model"]["fc2.weight"]
                                                                         .t().contiguous().t()}))
    yield "a note", dict(ckpt, note="my run")
    yield "a tensor of one's own", dict(ckpt, mean=torch.tensor([0.1307]), mask=torch.ones(3, dtype=torch.bool))
    yield "a config key of one's own", dict(ckpt, config=dict(ckpt["config"], momentum=0.9))
    yield "a history key of one's own", dict(ckpt, history=[dict(h, momentum=0.9) for h in ckpt["history"]])
    yield "a mask of -inf, a module's extra state", dict(ckpt, model=dict(
        ckpt["model"], mask=torch.full((3,), float("-inf")), **{"fc1._extra_state": {"calibrated": True}}))
    yield "a device, a size, uint16 and float8 tensors", dict(ckpt, device=torch.device("cpu"), size=torch.Size([2, 3]),
                                                              counts=torch.zeros(2, dtype=torch.uint16),
                                                              low=torch.zeros(2, dtype=torch.float8_e4m3fn))
    yield "nested plain values", dict(ckpt, notes={"tried": [("lr", 0.1), ("lr", 0.01)], "best": None, 3: {1.5, 2}})


def test_what_torch_writes_after_a_learners_edit_loads(good, tmp_path):
    """The same gate describes what torch writes, not the one network of the design card."""
    _, ckpt = good
    edits = list(learner_edits(ckpt))
    assert len(edits) == 17
    for what, edited in edits:
        torch.save(edited, tmp_path / "edited.pt")
        loaded = checkpoint.load(str(tmp_path / "edited.pt"))
        assert set(loaded) == set(edited), what
        for key in ("scheduler", "note", "mean", "notes"):
            if key in edited:
                assert str(loaded[key]) == str(edited[key]), what


def test_refusals_reach_the_scripts_as_one_line_and_change_nothing(good, fake_mnist, tmp_path):
    _, ckpt = good
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "model.pt"
    for bad in (dict(ckpt, epoch=5), dict(ckpt, config=dict(ckpt["config"], data_dir=123)),
                dict(ckpt, arch="784-64-10 sigmoid\x1b[2J"), dict(ckpt, history=[dict(h, test_loss=1e308)
                                                                                for h in ckpt["history"]])):
        torch.save(bad, path)
        for module, args in ((evaluate, [path, "--no-plots", "--data-dir", fake_mnist]),
                             (train, ["--resume", path, "--epochs", 9, "--data-dir", fake_mnist])):
            line = main_error(module, *args)
            assert "not a checkpoint of this train.py" in line and "\x1b" not in line, line
        proc = run_script("compare.py", tmp_path / "run", "--out", tmp_path / "c.png")
        assert proc.returncode == 1 and "not a checkpoint of this train.py" in proc.stderr, proc.stderr
        assert "\x1b" not in proc.stderr and "Traceback" not in proc.stderr
        assert sorted(os.listdir(tmp_path / "run")) == ["model.pt"] and not (tmp_path / "c.png").exists()


def test_optimizer_and_generator_are_needed_to_resume_only(good, fake_mnist, tmp_path, capsys):
    _, ckpt = good
    no_optimizer = saved(tmp_path, "no_optimizer.pt", {k: v for k, v in ckpt.items() if k != "optimizer"})
    evaluate.main([str(no_optimizer), "--data-dir", fake_mnist, "--no-plots"])
    assert "test accuracy: " in capsys.readouterr().out
    line = main_error(train, "--resume", no_optimizer, "--epochs", 5, "--data-dir", fake_mnist)
    assert "has no optimizer or generator state to resume from" in line
    assert not (tmp_path / "history.json").exists()


def test_a_checkpoint_of_the_first_train_py_is_read_as_one(good, fake_mnist, tmp_path, capsys, monkeypatch):
    """The first version saved no arch, no lr or batch size per epoch, no threads or data folder."""
    _, ckpt = good
    first = {k: v for k, v in ckpt.items() if k != "arch"}
    first["config"] = {k: v for k, v in ckpt["config"].items() if k in ("epochs", "batch_size", "lr", "seed", "loader")}
    first["history"] = [{k: v for k, v in h.items() if k not in ("lr", "batch_size")} for h in ckpt["history"]]
    path = saved(tmp_path, "first.pt", first)
    loaded = checkpoint.load(str(path))
    assert loaded["arch"] == "784-64-10 sigmoid" and loaded["history"][0]["lr"] == ckpt["config"]["lr"]
    evaluate.main([str(path), "--data-dir", fake_mnist, "--no-plots"])
    assert f"checkpoint {path}: 784-64-10 sigmoid, epoch 2" in capsys.readouterr().out  # what model.py builds
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(path.read_bytes())
    monkeypatch.setattr(train, "DATA_DIR", fake_mnist)  # what it reads, and says so
    train.main(["--resume", str(tmp_path / "run" / "model.pt"), "--epochs", "3", "--no-plots"])
    assert (f"does not say where its data was (an older train.py): reading {fake_mnist}; pass --data-dir"
            in capsys.readouterr().out)


def test_non_finite_weights_are_refused(good, fake_mnist, tmp_path):
    _, ckpt = good
    ckpt["model"]["fc2.bias"][3] = float("nan")
    path = saved(tmp_path, "nan.pt", ckpt)
    png = os.path.join(ROOT, "docs", "example_seven.png")
    for args in ([path, "--data-dir", fake_mnist], [path, "--image", png]):
        assert "model fc2.bias holds NaN values" in main_error(evaluate, *args)


class Tanh(nn.Module):
    """A learner's own activation: twice tanh, which nn.Tanh is not."""

    def forward(self, x):
        return 2 * torch.tanh(x)


class Deeper(model.Net):
    """A layer added, and dropout: what a learner writes into model.py."""

    def __init__(self, hidden=128, activation=nn.ReLU):
        super().__init__(hidden, activation)
        self.dropout = nn.Dropout(0.2)
        self.fc3 = nn.Linear(10, 10)

    def forward(self, x):
        return self.fc3(super().forward(self.dropout(x)))


DEFAULT = "Net(fc1: Linear(784, 64), activation: Sigmoid(), fc2: Linear(64, 10))"  # print(Net()), on one line


def test_old_runs_stay_usable_after_model_py_changes(good, fake_mnist, monkeypatch, capsys, tmp_path):
    path, _ = good
    evaluate.main([str(path), "--data-dir", fake_mnist, "--no-plots", "--device", "cpu"])
    before = capsys.readouterr().out.splitlines()
    monkeypatch.setattr(model.Net.__init__, "__defaults__", (128, nn.ReLU))  # HIDDEN = 128, ACTIVATION = nn.ReLU
    evaluate.main([str(path), "--data-dir", fake_mnist, "--no-plots", "--device", "cpu"])
    after = capsys.readouterr().out.splitlines()
    edited = "Net(fc1: Linear(784, 128), activation: ReLU(), fc2: Linear(128, 10))"
    assert after[0] == f"checkpoint {path}: {DEFAULT} (model.py now builds {edited}), epoch 2, device cpu"
    assert after[1:] == before[1:]  # the same network as before the edit, the same report
    line = main_error(train, "--resume", path, "--epochs", 5, "--data-dir", fake_mnist)
    assert f"holds a {DEFAULT} network, but model.py now builds {edited}: a run goes on with" in line
    assert "undo the edit to model.py" in line
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path / "runs"))
    train.main(["--data-dir", fake_mnist, "--epochs", "1", "--no-plots", "--device", "cpu"])
    assert os.listdir(tmp_path / "runs") == ["h128-relu-lr0.01-bs64"]  # the network is in the name


class CNN(nn.Module):
    """pytorch/examples' network for MNIST, smaller: what a learner writes into model.py next."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(8 * 13 * 13, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv1(x)), 2)
        return self.fc2(nn.functional.relu(self.fc1(self.dropout(x).flatten(1))))


@pytest.mark.parametrize("edit, arch, folder", [
    ((Deeper, None), "Deeper(fc1: Linear(784, 128), activation: ReLU(), fc2: Linear(128, 10), "
                     "dropout: Dropout(p=0.2, inplace=False), fc3: Linear(10, 10))", "h128-10-relu-dropout-lr0.01-bs64"),
    ((CNN, None), "CNN(conv1: Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1)), dropout: Dropout(p=0.25, "
                  "inplace=False), fc1: Linear(1352, 32), fc2: Linear(32, 10))", "h32-conv2d-dropout-lr0.01-bs64"),
    ((model.Net, (64, functools.partial(nn.LeakyReLU, 0.2))),
     "Net(fc1: Linear(784, 64), activation: LeakyReLU(negative_slope=0.2), fc2: Linear(64, 10))", "leakyrelu-lr0.01-bs64"),
    ((model.Net, (64, lambda: nn.LeakyReLU(0.2))),
     "Net(fc1: Linear(784, 64), activation: LeakyReLU(negative_slope=0.2), fc2: Linear(64, 10))", "leakyrelu-lr0.01-bs64"),
    ((model.Net, (64, Tanh)), "Net(fc1: Linear(784, 64), activation: Tanh(), fc2: Linear(64, 10))",
     "test_checkpoint.tanh-lr0.01-bs64"),
    pytest.param((model.Net, (0, nn.Sigmoid)), "Net(fc1: Linear(784, 0), activation: Sigmoid(), fc2: Linear(0, 10))",
                 "h0-lr0.01-bs64",  # torch warns of no weights
                 marks=pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")),
])
def test_any_network_model_py_builds_is_named_truly_and_rebuilt_only_exactly(fake_mnist, monkeypatch, tmp_path,
                                                                              capsys, edit, arch, folder):
    """Trained with model.py edited, the run is saved under its true description, print(model)'s; with the
    edit, evaluate.py rebuilds it; with model.py back as it was, it is refused (never rebuilt as something
    close), in one line that names the network it holds and where the run's own model.py is."""
    cls, defaults = edit
    if defaults:
        monkeypatch.setattr(model.Net.__init__, "__defaults__", defaults)
    monkeypatch.setattr(train, "Net", cls)
    monkeypatch.setattr(checkpoint, "Net", cls)
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path / "runs"))
    train.main(["--data-dir", fake_mnist, "--epochs", "1", "--no-plots", "--device", "cpu"])
    assert os.listdir(tmp_path / "runs") == [folder] and f": {cls.__name__} with " in capsys.readouterr().out
    path = tmp_path / "runs" / folder / "model.pt"
    assert checkpoint.described(torch.load(path, weights_only=True)["arch"]) == arch
    evaluate.main([str(path), "--data-dir", fake_mnist, "--no-plots"])
    assert capsys.readouterr().out.startswith(f"checkpoint {path}: {arch}, epoch 1")
    monkeypatch.undo()  # model.py as it was
    kept = tmp_path / "runs" / folder / "lesson" / "model.py"
    if cls is model.Net and defaults[1] is Tanh:  # in the learner's model.py, as it was when the run trained
        kept.write_text(kept.read_text() + "\n\nclass Tanh(nn.Module):\n    pass\n")
    if arch.startswith("Net(fc1: Linear(784, 0)"):  # HIDDEN edited back: Net(0) is rebuilt exactly as it was
        evaluate.main([str(path), "--data-dir", fake_mnist, "--no-plots"])
        assert capsys.readouterr().out.startswith(f"checkpoint {path}: {arch} (model.py now builds {DEFAULT})")
        return
    line = main_error(evaluate, path, "--data-dir", fake_mnist)
    assert f"holds a {arch} network, which model.py does not build now: make model.py build it again" in line
    assert f"as its own did: diff model.py {kept}" in line


def test_an_older_train_pys_descriptions_still_rebuild_what_they_name(good, fake_mnist, tmp_path, capsys):
    """Runs saved before print(model) was the description: '784-64-10 sigmoid', and a HIDDEN/ACTIVATION
    edit of it; an activation named that is not one (any module, Identity, a container) is refused."""
    _, ckpt = good
    evaluate.main([str(saved(tmp_path, "old.pt", dict(ckpt, arch="784-64-10 sigmoid"))), "--data-dir", fake_mnist,
                   "--no-plots"])
    assert ": 784-64-10 sigmoid, epoch 2" in capsys.readouterr().out  # what model.py builds now
    relu = model.Net(64, nn.ReLU).state_dict()
    evaluate.main([str(saved(tmp_path, "relu.pt", dict(ckpt, arch="784-64-10 relu", model=relu))),
                   "--data-dir", fake_mnist, "--no-plots"])
    assert f": 784-64-10 relu (model.py now builds {DEFAULT}), epoch 2" in capsys.readouterr().out
    for name in ("module", "softmax2d", "identity", "sequential", "modulelist", "multiheadattention"):
        path = saved(tmp_path, f"{name}.pt", dict(ckpt, arch=f"784-64-10 {name}"))
        line = main_error(evaluate, path, "--data-dir", fake_mnist, "--no-plots")
        assert (f"holds a 784-64-10 {name} network, which model.py does not build now" in line or name == "softmax2d"
                and "its 784-64-10 softmax2d network does not run on an image as data.py makes it" in line), line


def test_finite_weights_whose_outputs_overflow_are_refused(good, fake_mnist, tmp_path):
    _, ckpt = good
    path = saved(tmp_path, "overflow.pt", dict(ckpt, model=dict(ckpt["model"], **{
        "fc2.weight": torch.full_like(ckpt["model"]["fc2.weight"], 3e38)})))
    png = os.path.join(ROOT, "docs", "example_seven.png")
    for args in ([path, "--data-dir", fake_mnist, "--no-plots"], [path, "--image", png]):
        assert "its network's outputs overflow (they are not finite numbers)" in main_error(evaluate, *args)


def test_unsafe_global_reads_the_pickle_without_running_it():
    assert checkpoint.unsafe_global(pickle.dumps({"a": [1, 2.0, "x"]}, protocol=2)) is None
    assert checkpoint.unsafe_global(pickle.dumps(Call(print, "hi"), protocol=2)) == "__builtin__.print"
    assert checkpoint.unsafe_global(pickle.dumps(Call(print, "hi"), protocol=4)) == "an object through STACK_GLOBAL"
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2), "g": torch.Generator().get_state(), "i": torch.arange(3)}, buffer)
    with zipfile.ZipFile(buffer) as z:
        assert checkpoint.unsafe_global(z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])) is None


def test_every_refusal_before_unpickling_shows_names_from_the_file_escaped(good, tmp_path):
    """The file's own name, a global its pickle asks for and an archive entry's name are the file's
    text: an escape sequence in any of them reaches the terminal written out, in every message."""
    good, _ = good
    hostile = "x\x1b[2J\ry"
    folder = tmp_path / hostile
    folder.mkdir()
    plain = pickle.dumps({"a": 1}, protocol=2)
    evil_global = b"\x80\x02c" + hostile.encode() + b"\nsystem\n)R."  # GLOBAL 'x<ESC>... system', called
    entry = folder / "entry.pt"
    with zipfile.ZipFile(entry, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"archive/data/{hostile}", b"")
    huge = folder / "huge.pt"
    with open(huge, "wb") as f:
        f.truncate(checkpoint.MAX_BYTES + 1)
    files = {"a plain pickle that would call code": folder / "evil.pkl", "not a checkpoint": folder / "junk.pt",
             "an image": folder / "image.pt", "an odd entry": entry, "too large": huge,
             "an archive whose pickle would call code": with_pickle(good, evil_global, folder / "evil.pt"),
             "damaged": folder / "damaged.pt"}
    files["a plain pickle that would call code"].write_bytes(evil_global)
    files["not a checkpoint"].write_bytes(plain[:5])
    files["an image"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    damaged = bytearray(good.read_bytes())
    at = damaged.index(b"data.pkl") + 40  # inside the pickle's stored bytes: its checksum no longer matches
    damaged[at] ^= 0xFF
    files["damaged"].write_bytes(damaged)
    for what, path in files.items():
        with pytest.raises(cli.UserError) as refused:
            checkpoint.load(str(path))
        said = str(refused.value)
        assert said.isprintable() and "\\x1b" in said, (what, said)


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
                          "history entry 1: test_acc not a number"),
                         (dict(ckpt, arch="784-64-10 sigmoid\x1b[2J"), "arch not a printable text"),
                         (dict(ckpt, config=dict(ckpt["config"], loader="fast\n")), "config loader not one of")):
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
