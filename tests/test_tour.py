"""The tour on the tiny model (docs/tour.md): its command writes the tests' own model, and its figures are committed."""
import re

from conftest import ROOT, assert_drawn_png, run_script


def test_the_tours_command_writes_the_tests_tiny_model(tiny_gpt2, gpt2_dir, tmp_path):
    result = run_script("scripts/tiny_gpt2.py", tmp_path / "tiny", "--tokenizer_dir", gpt2_dir)
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
        assert (tmp_path / "tiny" / name).read_bytes() == (tiny_gpt2 / name).read_bytes(), name


def test_the_tour_shows_its_figures_and_every_command():
    tour = (ROOT / "docs" / "tour.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\((tour_[a-z_]+\.png)\)", tour)
    assert figures == ["tour_curves.png", "tour_attention.png"]
    for figure in figures:
        assert (ROOT / "docs" / figure).stat().st_size < 100_000  # small enough to keep in the repository
        assert_drawn_png(ROOT / "docs" / figure)
    for command in ("scripts/tiny_gpt2.py", "train.py", "plot.py", "sample.py", "prefix.attention"):
        assert re.search(rf"python (-m )?{re.escape(command)} .*out-tour", tour), command
