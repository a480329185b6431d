"""README.md's python blocks run as written, and README/docs stay a user's documentation."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_readme_python_blocks_run():
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no python blocks"
    namespace = {"__name__": "readme"}  # all blocks in order, in one namespace, like a notebook
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_each_readme_python_block_runs_on_its_own(index):
    """A reader copies one block: it must not lean on names an earlier block defined."""
    block = python_blocks(README.read_text())[index]
    exec(compile(block, f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})


def test_readme_has_no_machine_paths_or_run_labels():
    text = README.read_text()
    assert "/work/" not in text
    label = re.compile(r"\bs[0-9]+_?[a-z]*[0-9]*\b")
    labels = [c for c in re.findall(r"`([^`\n]+)`", text) if label.search(c)]
    assert not labels, f"run labels in README.md: {labels}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_no_work_diary_words(path):
    text = path.read_text().lower()
    for word in ("session", "throwaway"):
        assert word not in text, f"{path.name} says {word!r}"


def test_readme_links_into_docs_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    relative = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in relative)
    missing = [link for link in relative if not (ROOT / link).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_transformations_page_python_blocks_run():
    """docs/transformations.md's examples (penalty, sharpness, per-example norms, forward mode
    through the twin, export) run as written, in one namespace."""
    page = ROOT / "docs" / "transformations.md"
    blocks = python_blocks(page.read_text())
    assert len(blocks) >= 6
    namespace = {"__name__": "transformations"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"transformations.md python block {i + 1}", "exec"), namespace)
    assert namespace["top_eigenvalue"] > 0
    assert namespace["norms"].shape == (16,)
    assert namespace["probabilities"].shape == (16, 10)


# ------------------------------------------------------------------ facts stated twice agree
# A few facts are stated in several places (the code, the README, the docs); each test reads
# every place and checks that they say the same thing.


def test_the_default_convolution_is_what_the_code_runs():
    import inspect

    import jcnn.layers as L
    from jcnn.models import VGGNet

    default = inspect.signature(L.conv2d).parameters["impl"].default
    assert VGGNet.__dataclass_fields__["conv_impl"].default == default
    readme = (ROOT / "README.md").read_text()
    assert f'# impl="{default}" (default)' in readme
    assert f"`'{default}'` (the default)" in (ROOT / "docs" / "cs231n.md").read_text()


def test_every_page_that_offers_bfloat16_on_a_cpu_names_the_cpus_it_helps_on():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    offers = [p for p in pages if "--compute_dtype=bfloat16`" in p.read_text()]
    assert {p.name for p in offers} >= {"README.md", "scaling-out.md"}
    for page in offers:
        text = " ".join(page.read_text().split())
        assert "bfloat16 units" in text or "AVX512-BF16" in text, page.name
        assert not re.search(r"bfloat16[^.]*(GPU/TPU|GPU or TPU) (only|option)", text), page.name


def test_the_checkpoint_interval_the_docs_give_is_the_flags_default():
    from absl import flags

    from experiments import recipes, train_flags

    fv = flags.FlagValues()
    train_flags.define_recipe_flags(fv, recipes.VGG_SEED)
    text = " ".join((ROOT / "docs" / "after-a-crash.md").read_text().split())
    stated = re.search(
        r"(\d+) minutes or more after its last checkpoint \(`--checkpoint_minutes`", text
    )
    assert stated and float(stated.group(1)) == fv["checkpoint_minutes"].default
