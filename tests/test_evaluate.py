"""evaluate.py: the report agrees with train.py and with its own confusion matrix, one pass draws both
pictures with either loader, and --image classifies files one line each."""
import os

import pytest
import torch
from PIL import Image, ImageDraw

from machinery import checkpoint
import evaluate
from machinery import evidence
from machinery import photo
from machinery import plots
import train
from conftest import DEVICES, assert_one_line_error, in_order, main_error, run_script
from model import Net


@pytest.fixture(scope="module")
def evaluated(trained, fake_mnist):
    out, _ = trained
    proc = run_script("evaluate.py", out / "model.pt", "--data-dir", fake_mnist, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_reports_the_accuracy_train_printed_and_draws_the_pictures_of_that_pass(trained, fake_mnist, tmp_path,
                                                                               monkeypatch):
    out, train_stdout = trained
    drawn = {}
    for name in ("confusion_matrix", "mistakes", "mistakes_evidence", "hidden_units"):  # what each is drawn from
        draw = getattr(plots, name)
        monkeypatch.setattr(plots, name,
                            lambda *args, name=name, draw=draw: drawn.setdefault(name, args) and draw(*args))
    proc = run_script("evaluate.py", out / "model.pt", "--data-dir", fake_mnist, "--device", "cpu",
                      "--plots-dir", tmp_path)
    stdout = proc.stdout
    last_epoch = [line for line in train_stdout.splitlines() if line.startswith("epoch 2/2")][0]
    accuracy = last_epoch.split("test loss ")[1].split(" acc ")[1].split("%")[0]
    line = [x for x in stdout.splitlines() if x.startswith("test accuracy: ")][0]
    assert line.startswith(f"test accuracy: {accuracy}% (") and line.endswith("/200)")
    assert stdout.startswith(f"checkpoint {out / 'model.pt'}: Net(fc1: Linear(784, 64), activation: Sigmoid(), "
                             "fc2: Linear(64, 10)), epoch 2, device cpu")
    lines = stdout.splitlines()
    start = lines.index("confusion matrix (rows: true digit, columns: predicted digit)")
    printed = torch.tensor([[int(v) for v in row.split()[1:]] for row in lines[start + 2: start + 12]])
    assert torch.equal(drawn["confusion_matrix"][0], printed)
    images, probs, labels = drawn["mistakes"]
    x, y = next(iter(in_order(fake_mnist, 200)))
    assert torch.equal(images, x) and torch.equal(labels, y) and probs.shape == (200, 10)
    assert (probs.argmax(1) == labels).sum() == printed.trace()
    model = checkpoint.model_from(checkpoint.load(str(out / "model.pt")), "model.pt")
    fc1, fc2, arch, epoch = drawn["hidden_units"]
    assert torch.equal(fc1, model.fc1.weight) and torch.equal(fc2, model.fc2.weight) and (arch, epoch) == (
        "Net(fc1: Linear(784, 64), activation: Sigmoid(), fc2: Linear(64, 10))", 2)
    shown, maps, true, said, runners_up = drawn["mistakes_evidence"]  # the most confident mistakes, explained
    picked = plots.pick_mistakes(probs, labels, evaluate.EXPLAINED).tolist()
    assert true == [labels[i].item() for i in picked] and said == [probs[i].argmax().item() for i in picked]
    for i, image, pixels, answer, runner_up in zip(picked, shown, maps, said, runners_up):
        assert torch.equal(image, images[i]) and (answer, runner_up, True) == (
            *evidence.evidence(model, images[i])[:2], torch.allclose(pixels, evidence.evidence(model, images[i])[2]))
    for name in evaluate.PICTURES:
        assert f"saved {tmp_path / name}" in lines
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and 300 <= image.width <= 2000 and 200 <= image.height <= 2000


def test_printed_numbers_agree_with_the_confusion_matrix(evaluated):
    _, stdout = evaluated
    lines = stdout.splitlines()
    start = lines.index("confusion matrix (rows: true digit, columns: predicted digit)")
    matrix = torch.tensor([[int(v) for v in line.split()[1:]] for line in lines[start + 2: start + 12]])
    assert matrix.shape == (10, 10)
    correct, total = matrix.trace().item(), matrix.sum().item()
    assert f"test accuracy: {100 * correct / total:.2f}% ({correct}/{total})" in lines
    header = [i for i, line in enumerate(lines) if line.startswith("digit  images  correct  recall  precision")][0]
    for d, row in enumerate(lines[header + 1: header + 11]):
        digit, images, right, recall, precision, f1 = row.replace("%", "").split()
        assert int(digit) == d and int(images) == matrix[d].sum() and int(right) == matrix[d, d]
        expected_recall = 100 * matrix[d, d] / matrix[d].sum() if matrix[d].sum() else 0.0
        expected_precision = 100 * matrix[d, d] / matrix[:, d].sum() if matrix[:, d].sum() else 0.0
        assert float(recall) == pytest.approx(float(expected_recall), abs=0.005)
        assert float(precision) == pytest.approx(float(expected_precision), abs=0.005)
        p, r = float(precision), float(recall)
        assert float(f1) == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=0.01)


def test_class_metrics_on_a_known_matrix():
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion[0, 0], confusion[0, 1], confusion[1, 1], confusion[2, 0] = 8, 2, 5, 5
    rows = evaluate.class_metrics(confusion)
    assert rows[0] == (10, 8, 80.0, pytest.approx(100 * 8 / 13), pytest.approx(2 * 80 * (800 / 13) / (80 + 800 / 13)))
    assert rows[1][2:4] == (100.0, pytest.approx(100 * 5 / 7))
    assert rows[2] == (5, 0, 0.0, 0.0, 0.0) and rows[3] == (0, 0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_one_pass_gives_train_evaluate_numbers_and_what_the_pictures_need(fake_mnist, device):
    torch.manual_seed(0)
    device = torch.device(device)
    model = Net().to(device)
    test_loader = in_order(fake_mnist, 64, "fast", device)
    passes = []

    class Counted:  # the loader, counting its passes over the test set
        def __iter__(self):
            passes.append(1)
            return iter(test_loader)
    loss, confusion, images, probs, labels = evaluate.evaluate_keeping(model, Counted(), device)
    assert passes == [1]
    expected_loss, _, expected_confusion = train.evaluate(model, test_loader, device)
    assert loss == expected_loss and torch.equal(confusion, expected_confusion)
    x, y = next(iter(in_order(fake_mnist, 200)))
    assert torch.equal(images, x) and torch.equal(labels, y)
    assert torch.allclose(probs, torch.softmax(model(x.to(device)), 1).cpu(), atol=1e-6)


def test_no_plots_writes_no_pictures(trained, fake_mnist, tmp_path):
    out, _ = trained
    (tmp_path / "model.pt").write_bytes((out / "model.pt").read_bytes())
    proc = run_script("evaluate.py", tmp_path / "model.pt", "--data-dir", fake_mnist, "--no-plots")
    assert proc.returncode == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert "saved" not in proc.stdout


def test_pictures_of_the_users_own_are_never_drawn_over(trained, fake_mnist, tmp_path):
    """Its own pictures are drawn again over (they say so inside); a file of the same name that it did not
    draw stops it before the evaluation, and stays byte for byte as it was."""
    out, _ = trained
    (tmp_path / "model.pt").write_bytes((out / "model.pt").read_bytes())
    proc = run_script("evaluate.py", tmp_path / "model.pt", "--data-dir", fake_mnist)
    assert proc.returncode == 0 and "saved" in proc.stdout, proc.stderr
    again = run_script("evaluate.py", tmp_path / "model.pt", "--data-dir", fake_mnist)
    assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr  # its own: drawn over
    for name in evaluate.PICTURES:
        theirs = Image.new("RGB", (8, 8), (1, 2, 3))
        theirs.save(tmp_path / name)
        before = (tmp_path / name).read_bytes()
        proc = run_script("evaluate.py", tmp_path / "model.pt", "--data-dir", fake_mnist)
        assert_one_line_error(proc, f"{tmp_path / name} is not a picture evaluate.py drew, so it stays as it is")
        assert (tmp_path / name).read_bytes() == before and "test accuracy" not in proc.stdout
        (tmp_path / name).unlink()


def test_without_data_dir_the_run_is_evaluated_on_its_own_data(trained, evaluated, tmp_path):
    out, _ = trained
    # from another folder, whose data/ does not exist: the run's saved data dir is the one read
    proc = run_script("evaluate.py", out / "model.pt", "--no-plots", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = lambda stdout: [line for line in stdout.splitlines()[1:] if not line.startswith("saved ")]  # noqa: E731
    assert report(proc.stdout) == report(evaluated[1]) and "/200)" in proc.stdout
    assert os.listdir(tmp_path) == []


def test_image_command_line(trained, tmp_path):
    out, _ = trained
    seven = Image.new("RGB", (240, 320), (235, 232, 220))
    ImageDraw.Draw(seven).line([(60, 70), (180, 70), (100, 260)], fill=(30, 30, 60), width=18)
    seven.save(tmp_path / "d.png")
    seven.save(tmp_path / "d.gif")
    Image.new("L", (100, 100), 240).save(tmp_path / "blank.png")
    (tmp_path / "notes.txt").write_text("not an image")
    paths = [tmp_path / "d.png", tmp_path / "blank.png", tmp_path / "notes.txt", tmp_path / "d.gif"]
    proc = run_script("evaluate.py", out / "model.pt", "--image", *paths, "--save-input", tmp_path / "seen")
    assert proc.returncode == 1  # one file or more failed; the others were still classified
    lines = proc.stdout.splitlines()
    assert lines[1].startswith(f"{paths[0]}: ") and "%)  top 3: " in lines[1] and lines[1].count("%") == 4
    assert proc.stderr.splitlines() == [
        f"error: {paths[1]}: no digit found: the image is blank or has too little contrast",
        f"error: {paths[2]}: not an image that PIL can read (PNG, JPEG, ...)"]
    assert sorted(os.listdir(tmp_path / "seen")) == ["d-2.mnist.png", "d.mnist.png"]  # neither saved over the other
    with Image.open(tmp_path / "seen" / "d.mnist.png") as seen:
        assert seen.size == (28, 28) and seen.mode == "L"
    ok = run_script("evaluate.py", out / "model.pt", "--image", paths[0], "--save-input")
    assert ok.returncode == 0 and (tmp_path / "d.mnist.png").exists()
    (tmp_path / "taken").write_text("a file where the folder would go")
    proc = run_script("evaluate.py", out / "model.pt", "--image", paths[0], "--save-input", tmp_path / "taken")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_evidence_for_an_image_is_the_evidence_of_what_the_model_saw(trained, tmp_path, monkeypatch):
    out, _ = trained
    seven = Image.new("L", (240, 320), 235)
    ImageDraw.Draw(seven).line([(60, 70), (180, 70), (100, 260)], fill=30, width=18)
    seven.save(tmp_path / "d.png")
    drawn, draw = [], plots.evidence
    monkeypatch.setattr(plots, "evidence", lambda *args: drawn.append(args) or draw(*args))
    proc = run_script("evaluate.py", out / "model.pt", "--image", tmp_path / "d.png", tmp_path / "d.png",
                      "--evidence", tmp_path / "why")
    assert proc.returncode == 0, proc.stderr
    (x, pixels, answer, runner_up, name), _ = drawn
    model = checkpoint.model_from(checkpoint.load(str(out / "model.pt")), "model.pt")
    assert torch.equal(x, photo.read_digit(str(tmp_path / "d.png"))[1]) and name == "d.png"
    expected = evidence.evidence(model, x)
    assert (answer, runner_up) == expected[:2] and torch.allclose(pixels, expected[2])
    assert f"  saved why {answer}, not {runner_up}: {tmp_path / 'why' / 'd.evidence.png'}" in proc.stdout
    assert sorted(os.listdir(tmp_path / "why")) == ["d-2.evidence.png", "d.evidence.png"]
    assert plots.drawn_here(tmp_path / "why" / "d.evidence.png")
    assert "--evidence goes with --image" in main_error(evaluate, out / "model.pt", "--evidence")


def test_save_input_never_replaces_a_file_and_a_failed_save_does_not_stop_the_rest(trained, tmp_path, disk):
    out, _ = trained
    seven = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(seven).line([(40, 40), (160, 40), (90, 170)], fill=0, width=14)
    seven.save(tmp_path / "d.png")
    seven.rotate(20, fillcolor=255).save(tmp_path / "d.mnist.png")  # the user's own file, named as we would
    before = (tmp_path / "d.mnist.png").read_bytes()
    proc = run_script("evaluate.py", out / "model.pt", "--image", tmp_path / "d.png", tmp_path / "d.mnist.png",
                      "--save-input")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "d.mnist.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d-2.mnist.png", "d.mnist.mnist.png", "d.mnist.png", "d.png"]
    full = disk(12)  # three pages: two filled, room for the first 28x28 image, not for the second
    (full / "filler").write_bytes(bytes(8192))
    proc = run_script("evaluate.py", out / "model.pt", "--image", tmp_path / "d.png", tmp_path / "d.png",
                      "--save-input", full)
    assert proc.returncode == 1 and proc.stdout.count(f"{tmp_path / 'd.png'}: ") == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("error: ") == 1 and "No space left on device" in proc.stderr, proc.stderr


def test_save_input_goes_with_image(trained):
    out, _ = trained
    assert "--save-input goes with --image PATH" in main_error(evaluate, out / "model.pt", "--save-input")
