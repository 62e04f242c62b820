"""The pictures: valid PNGs of a sensible size, and printed numbers that agree with the matrix."""
import struct

import pytest
import torch

import evaluate
from conftest import run_script


def png_size(path):
    """(width, height) of a PNG file, checking its signature and header chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def evaluated(trained, fake_mnist):
    out, _ = trained
    proc = run_script("evaluate.py", out / "model.pt", "--data-dir", fake_mnist, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_training_curves_png(trained):
    out, stdout = trained
    width, height = png_size(out / "training_curves.png")
    assert 600 <= width <= 2000 and 250 <= height <= 1200
    assert f"saved {out / 'training_curves.png'}" in stdout


def test_evaluate_writes_confusion_matrix_and_mistakes(evaluated):
    out, stdout = evaluated
    for name in ("confusion_matrix.png", "mistakes.png"):
        width, height = png_size(out / name)
        assert 300 <= width <= 2000 and 200 <= height <= 2000, name
        assert f"saved {out / name}" in stdout.splitlines()


def test_no_plots_writes_no_pictures(trained, fake_mnist, tmp_path):
    out, _ = trained
    (tmp_path / "model.pt").write_bytes((out / "model.pt").read_bytes())
    proc = run_script("evaluate.py", tmp_path / "model.pt", "--data-dir", fake_mnist, "--no-plots")
    assert proc.returncode == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert "saved" not in proc.stdout


def test_printed_numbers_agree_with_the_confusion_matrix(evaluated):
    _, stdout = evaluated
    lines = stdout.splitlines()
    start = lines.index("confusion matrix (rows: true digit, columns: predicted digit)")
    matrix = torch.tensor([[int(v) for v in line.split()[1:]] for line in lines[start + 2: start + 12]])
    assert matrix.shape == (10, 10)
    correct, total = matrix.trace().item(), matrix.sum().item()
    assert f"test accuracy: {100 * correct / total:.2f}% ({correct}/{total})" in lines
    table = lines[lines.index("digit  images  correct  accuracy  precision  recall      F1") + 1:][:10]
    for d, row in enumerate(table):
        digit, images, right, acc, precision, recall, f1 = row.replace("%", "").split()
        assert int(digit) == d and int(images) == matrix[d].sum() and int(right) == matrix[d, d]
        expected_recall = 100 * matrix[d, d] / matrix[d].sum() if matrix[d].sum() else 0.0
        expected_precision = 100 * matrix[d, d] / matrix[:, d].sum() if matrix[:, d].sum() else 0.0
        assert float(acc) == float(recall) == pytest.approx(float(expected_recall), abs=0.005)
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
