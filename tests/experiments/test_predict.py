"""Using a trained run: experiments.predict classifies image files as the run scored its own
test images, and experiments.export writes a program that gives the same probabilities in an
interpreter that cannot import jcnn."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from experiments import evaluate, export, predict, vgg_cifar
from experiments import train as app_train
from experiments.errors import UsageFailure
from jcnn import train
from jcnn.classifier import load_classifier
from jcnn.data import get_cifar10_data
from tests.experiments.test_apps import TINY_VGG, run_in_process
from tests.experiments.util import ROOT, fatal_message, fatal_messages, subprocess_env


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_cifar_dir) -> Path:
    workdir = tmp_path_factory.mktemp("run") / "vgg"
    run_in_process(vgg_cifar, workdir, fake_cifar_dir, *TINY_VGG, "--test_time_flip")
    return workdir


@pytest.fixture(scope="module")
def test_images(tmp_path_factory, fake_cifar_dir) -> tuple[list[Path], np.ndarray]:
    """The run's first 5 test images as PNG files, and the run's own preprocessed copies."""
    folder = tmp_path_factory.mktemp("pngs")
    raw = get_cifar10_data(fake_cifar_dir, 40, 10, 10, subtract_mean=False)["X_test"][:5]
    paths = []
    for i, image in enumerate(raw.astype(np.uint8).transpose(0, 2, 3, 1)):
        paths.append(folder / f"test_{i}.png")
        Image.fromarray(image).save(paths[-1])
    run = get_cifar10_data(fake_cifar_dir, 40, 10, 10)["X_test"][:5]
    return paths, run


def test_predict_gives_the_probabilities_the_run_scores_its_test_images_with(finished, test_images):
    paths, X = test_images
    clf = load_classifier(finished)
    assert clf.test_time_flip and clf.class_names[0] == "class0"
    results = predict.classify(clf, paths, top_k=10, tta=None)
    scored = jax.jit(lambda p, s, X: train.test_time_scores(clf.model, p, s, X, flip=True))
    want = jax.nn.softmax(scored(clf.params, clf.state, X))  # jitted: one program, not dozens
    for result, p in zip(results, np.asarray(want), strict=True):
        got = {t["class"]: t["probability"] for t in result["top"]}
        assert list(got) == [clf.class_names[i] for i in np.argsort(-p, kind="stable")]
        np.testing.assert_allclose([got[n] for n in clf.class_names], p, rtol=1e-5, atol=1e-6)
    plain = predict.classify(clf, paths[:1], top_k=1, tta=False)[0]["top"][0]["probability"]
    apply = jax.jit(clf.model.apply, static_argnames="train")
    scores = apply(clf.params, clf.state, X[:1], train=False)[0]
    assert plain == pytest.approx(float(np.max(jax.nn.softmax(scores))), rel=1e-5)


def test_predict_reads_any_mode_and_size_and_refuses_a_bad_file_in_one_line(finished, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "d.jpg")
    clf = load_classifier(finished)
    results = predict.classify(clf, predict.image_files([str(tmp_path)]), top_k=2, tta=None)
    assert [Path(r["image"]).name for r in results] == ["a.png", "b.png", "c.png", "d.jpg"]
    assert all(len(r["top"]) == 2 for r in results)
    (tmp_path / "e.png").write_bytes(b"not an image")
    with pytest.raises(UsageFailure) as info:
        predict.classify(clf, predict.image_files([str(tmp_path)]), top_k=2, tta=None)
    assert "e.png" in fatal_message(str(info.value.code))
    with pytest.raises(UsageFailure, match="no such file"):
        predict.image_files([str(tmp_path / "missing.png")])
    with pytest.raises(UsageFailure, match="holds no trained network"):
        predict.load(tmp_path)
    with pytest.raises(UsageFailure, match="nowhere does not exist"):  # not "holds no network"
        predict.load(tmp_path / "nowhere")


def test_predict_names_a_device_or_a_dangling_link_for_what_it_is(tmp_path):
    """A link to /dev/zero named .png was reported as "no such file or folder"."""
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(UsageFailure, match=r"zero.png is not a regular file \(a device"):
        predict.image_files([str(tmp_path / "zero.png")])
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    with pytest.raises(UsageFailure) as info:
        predict.image_files([str(tmp_path / "gone.png")])
    assert re.search(r"gone.png is a link to \S*deleted.png, which does not exist$",
                     fatal_message(str(info.value.code)))  # fmt: skip


WITHOUT_JCNN = textwrap.dedent(
    """
    import json, sys
    sys.modules["jcnn"] = None  # any import of jcnn now fails
    import jax, numpy as np
    program = jax.export.deserialize(open(sys.argv[1], "rb").read())
    classes = json.load(open(sys.argv[1] + ".json"))["classes"]
    probs = np.asarray(program.call(np.load(sys.argv[2])))
    np.save(sys.argv[3], probs)
    print(classes[int(np.argmax(probs[0]))])
    """
)


def test_a_run_still_training_is_used_with_its_best_parameters_so_far(finished, tmp_path, capsys):
    """Without best.npz, the newest checkpoint's best parameters and the preprocessing the
    run recorded when it started; the classifier says where they come from, and export says
    so as predict does (it exported them silently)."""
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    (workdir / "checkpoints" / "best.npz").unlink()
    (workdir / "checkpoints" / "best.json").unlink()
    clf = load_classifier(workdir)
    assert "still training" in clf.source and "epoch_010.npz" in clf.source  # the newest
    done = load_classifier(finished)  # its best so far are the ones the finished run kept
    np.testing.assert_array_equal(clf.mean_image, done.mean_image)
    for a, b in zip(jax.tree.leaves(clf.params), jax.tree.leaves(done.params), strict=True):
        np.testing.assert_array_equal(a, b)
    export.export(workdir, tmp_path / "model.jaxexport", tta=None)
    assert "export: using" in capsys.readouterr().err and "still training" in clf.source


@pytest.mark.parametrize("which", ["best.npz", "a run in progress"])
def test_a_checkpoint_holding_nan_without_checksums_is_refused(finished, tmp_path, which):
    """A best.npz with a NaN parameter and its sidecar's checksums removed gave made-up
    probabilities (XLA folded the NaN constants into garbage), evaluate an accuracy of 0 and
    export a program: the values are checked as a run's checkpoints' are."""
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    folder = workdir / "checkpoints"
    if which != "best.npz":
        for stale in ("best.npz", "best.json"):
            (folder / stale).unlink()
    npz = folder / ("best.npz" if which == "best.npz" else "epoch_010.npz")
    side = npz.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({k: v for k, v in meta.items() if not k.endswith("sha256")}))
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    key = next(k for k in sorted(arrays) if k.endswith("params/out/b") or k.endswith("/b"))
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = np.nan
    with open(npz, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=r"holds non-finite values"):
        load_classifier(workdir)
    if which == "best.npz":  # evaluate reads best.npz only (it scored 0.0 and said nothing)
        fv = flags.FlagValues()
        evaluate.define_flags(fv)
        fv(["prog", f"--workdir={workdir}"])
        with pytest.raises(UsageFailure, match=r"best.npz: .*holds non-finite values"):
            evaluate.run(fv)


@pytest.mark.parametrize(
    "change, message",
    [({"test_time": {"flip": True, "translate": 10**6}}, "translate an int in"),
     ({"test_time": {"flip": "no", "translate": 0}}, "flip true or false"),
     ({"classes": ["class0"] * 10}, "must be 10 distinct names"),
     ({"classes": [5, *[f"c{i}" for i in range(9)]]}, "must be 10 distinct names")],
)  # fmt: skip
def test_a_classifier_record_without_checksums_is_checked_before_use(
    finished, tmp_path, change, message
):
    """In a best.json without checksums, translate=10**6 made predict grow to 3.6 GB and
    on, flip "no" read as true, duplicate or non-string class names passed."""
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    side = workdir / "checkpoints" / "best.json"
    meta = {k: v for k, v in json.loads(side.read_text()).items() if not k.endswith("sha256")}
    meta["classifier"] = {**meta["classifier"], **change}
    side.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        load_classifier(workdir)


@pytest.mark.parametrize(
    "out, message",
    [("a folder", "is a folder: name a file"), ("missing/model.jaxexport", "does not exist"),
     ("/proc/model.jaxexport", "no file can be written there")],
)  # fmt: skip
def test_export_to_a_path_where_no_file_can_be_written_is_one_line(
    finished, tmp_path, out, message
):
    """``--out`` under /proc gave a 33-line FileNotFoundError traceback."""
    (tmp_path / "a folder").mkdir()
    with pytest.raises(UsageFailure, match=message):
        export.export(finished, tmp_path / out, tta=None)


def test_export_with_an_empty_out_says_so(finished):
    """--out= was reported as "--out=. is a folder" (the empty path read as the cwd)."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments.export", f"--workdir={finished}", "--out="],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 1
    assert fatal_messages(done.stderr) == ["FATAL --out= is empty: name the file to write"]


@pytest.mark.parametrize("target", ["checkpoints/best.npz", "config"])
def test_export_never_overwrites_a_file_that_is_not_an_export(finished, tmp_path, target):
    """``--out=<workdir>/checkpoints/best.npz`` replaced the run's trained parameters with the
    exported program (and ``--out=<workdir>/config`` its config.json with the description);
    now a file in the way is refused before any work, unless it is an earlier export."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UsageFailure, match=r"exists and is not an exported classifier"):
        export.export(run, run / target, tta=None)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    program, _ = export.export(run, tmp_path / "model.jaxexport", tta=None)
    again, _ = export.export(run, program, tta=None)  # an earlier export is replaced
    assert again == program and program.stat().st_size > 0


def run_without_jcnn(program: Path, images: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, str]:
    """The exported program's probabilities for ``images``, computed in a fresh interpreter
    where ``import jcnn`` fails, and the first image's class name as it prints it."""
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "load.py").write_text(WITHOUT_JCNN)
    done = subprocess.run(
        [sys.executable, "load.py", str(program), "images.npy", "out.npy"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(tmp_path / "out.npy"), done.stdout.strip()


def test_the_exported_classifier_runs_without_jcnn_and_gives_predicts_probabilities(
    finished, test_images, tmp_path
):
    paths, _ = test_images
    program, described = export.export(finished, tmp_path / "model.jaxexport", tta=None)
    assert described.name == "model.jaxexport.json"
    images = predict.read_images(paths, (32, 32))
    got, first = run_without_jcnn(program, images, tmp_path)
    want = load_classifier(finished).predict(images)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert first == load_classifier(finished).class_names[int(np.argmax(want[0]))]


# ------------------------------------------------------------------ your own image folders

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 210)}


def write_shapes(root: Path, *, per_class: int = 12, size=(20, 24)) -> Path:
    """ROOT/{train,test}/<colour>/*.png: noisy images with a block of the class's colour."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
                top, left = rng.integers(0, 8, 2)
                image[top : top + 10, left : left + 12] = colour
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    return root


FOLDER_ARGS = ["--dataset=folder", "--image_size=16", "--num_train=30", "--num_val=6",
               "--num_test=18", "--batch_size=6", "--num_epochs=3", "--print_every=5",
               "--noplots", *TINY_VGG]  # fmt: skip


def test_an_app_trains_on_an_image_folder_and_predict_and_export_use_it(tmp_path):
    root = write_shapes(tmp_path / "shapes")
    workdir = tmp_path / "run"
    fv = flags.FlagValues()
    vgg_cifar.define_flags(fv)
    argv = fv(["prog", f"--workdir={workdir}", f"--data_dir={root}", *FOLDER_ARGS])
    summary = app_train.main(argv, recipe_class=vgg_cifar.RECIPE_CLASS,
                          fv=fv)  # fmt: skip
    assert summary["model"]["num_classes"] == 3 and summary["model"]["input_dim"] == [3, 16, 16]
    clf = load_classifier(workdir)
    assert clf.class_names == ("blue", "green", "red") and clf.image_size == (16, 16)
    picture = root / "test" / "red" / "0.png"  # 20x24: resized to 16x16 as in training
    (result,) = predict.classify(clf, [picture], top_k=3, tta=None)
    assert sorted(t["class"] for t in result["top"]) == ["blue", "green", "red"]
    program, _ = export.export(workdir, tmp_path / "shapes.jaxexport", tta=None)
    images = predict.read_images([picture], clf.image_size)
    got, _ = run_without_jcnn(program, images, tmp_path)
    np.testing.assert_allclose(got[0], clf.predict(images)[0], rtol=1e-5)


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda r: shutil.rmtree(r / "train" / "green") or shutil.rmtree(r / "test" / "green")
         or shutil.rmtree(r / "train" / "blue") or shutil.rmtree(r / "test" / "blue"),
         "at least two"),
        (lambda r: [p.unlink() for p in (r / "train" / "blue").iterdir()], "has no images"),
        (lambda r: (r / "train" / "red" / "0.png").write_bytes(b"junk"), "0.png"),
        (lambda r: Image.new("RGB", (9, 9)).save(r / "train" / "red" / "0.png"), "same size"),
    ],
    ids=["one class", "empty class", "unreadable", "mixed sizes"],
)  # fmt: skip
def test_a_bad_image_folder_stops_in_one_line_before_training(tmp_path, spoil, message):
    root = write_shapes(tmp_path / "shapes", per_class=4)
    spoil(root)
    fv = flags.FlagValues()
    vgg_cifar.define_flags(fv)
    args = [a for a in FOLDER_ARGS if not a.startswith(("--image_size", "--num_t", "--num_v"))]
    argv = fv(["prog", f"--workdir={tmp_path / 'run'}", f"--data_dir={root}", *args,
               "--num_train=5", "--num_val=1", "--num_test=2"])  # fmt: skip
    with pytest.raises(UsageFailure) as info:
        app_train.main(argv, recipe_class=vgg_cifar.RECIPE_CLASS,
                    fv=fv)  # fmt: skip
    assert message in fatal_message(str(info.value.code))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_model_too_large_for_the_resized_images_names_image_size(tmp_path):
    """--image_size=200000 was refused naming only the model's flags (num_filters, ...)."""
    root = write_shapes(tmp_path / "shapes", per_class=4)
    fv = flags.FlagValues()
    vgg_cifar.define_flags(fv)
    args = [a for a in FOLDER_ARGS if not a.startswith(("--image_size", "--num_t", "--num_v"))]
    argv = fv(["prog", f"--workdir={tmp_path / 'run'}", f"--data_dir={root}", *args,
               "--num_train=5", "--num_val=1", "--num_test=2", "--image_size=200000"])  # fmt: skip
    with pytest.raises(UsageFailure) as info:
        app_train.main(argv, recipe_class=vgg_cifar.RECIPE_CLASS, fv=fv)
    message = fatal_message(str(info.value.code))
    assert message.startswith(
        "FATAL invalid model flags for the image folder's 200000x200000 images "
        "(--image_size=200000): "
    ), message
    assert "--num_filters=(" in message  # the model's flags, named as typed


def test_bench_predict_times_the_four_ways_to_classify(finished):
    from experiments import bench_predict

    rows = bench_predict.measure(finished, num_images=6, batch_size=4, repeats=1)
    assert [r.split(",")[0].split(" (")[0] for r, _ in rows] == [
        "read and convert 6 PNG files", "jcnn classifier", "jcnn classifier",
        "exported program",
    ]  # fmt: skip
    assert all(rate > 0 for _, rate in rows)


def test_a_folder_run_resumes_and_evaluates_like_a_cifar_run(tmp_path):
    """More epochs extend a finished folder run from its checkpoint; evaluate reads the same
    folder split again and finds the run's own test accuracy."""

    root = write_shapes(tmp_path / "shapes", per_class=6)
    workdir = tmp_path / "run"
    args = [a for a in FOLDER_ARGS if not a.startswith(("--num_t", "--num_v", "--num_e"))]
    args += ["--num_train=15", "--num_val=3", "--num_test=9"]

    def run(epochs: int) -> dict:
        fv = flags.FlagValues()
        vgg_cifar.define_flags(fv)
        argv = fv(["prog", f"--workdir={workdir}", f"--data_dir={root}", *args,
                   f"--num_epochs={epochs}"])  # fmt: skip
        return app_train.main(argv, recipe_class=vgg_cifar.RECIPE_CLASS, fv=fv)  # fmt: skip

    run(1)
    summary = run(2)  # resumed from epoch 1's checkpoint
    assert summary["iterations"] == 4 and summary["resumed_from_iteration"] == 2
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    fv(["prog", f"--workdir={workdir}"])
    result = evaluate.run(fv)
    assert result["num_test"] == 9 and result["test_acc_flip"] is not None
    assert result["test_acc"] == summary["test_acc"]
