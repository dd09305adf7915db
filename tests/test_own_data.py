"""Tables of your own: loading and refusals, the task rule, classification end to end, engine and analysis."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import StratifiedKFold, train_test_split

import best_hyperparameter_testing_multiple as best_script
import hyperparameter_tuning as tuning_script
from data import DatasetError, dataset_name, load_dataset, tuning_folds
from data.datasets import infer_task
from deployment.export import build_encoder, cloud_predict
from deployment.export import main as export_main
from models import METHOD_NAMES, METHODS, QuantizerContext, Setting, build_model, load_model, train_model, train_models
from models.engine import _cross_entropy_grad
from models.training import split_metrics
from protocol.common import ProtocolError
from protocol.schema import BEST, TUNING, read_results
from protocol.tuning import check_registered_options
from quantization.wire import pack
from result_analysis import create_result_tables, plots
from result_analysis.analysis import load_results, long_losses


def sensor_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Three numeric readings and a label of three classes (text), with unequal class sizes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    label = np.where(x[:, 0] > 0.6, "hot", np.where(x[:, 1] > 0, "warm", "cold"))
    return pd.DataFrame({"t1": x[:, 0], "t2": x[:, 1], "humidity": 40 + 5 * x[:, 2], "state": label})


# --- the task rule ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, task", [
    (["a", "b", "a"], "classification"),  # text labels
    ([True, False, True], "classification"),
    ([3, 4, 5, 6, 7, 8, 9] * 3, "classification"),  # whole numbers, 7 distinct values (wine_quality as a file)
    (list(range(20)) * 2, "classification"),  # 20 distinct: the limit
    (list(range(21)) * 2, "regression"),  # 21 distinct
    ([0.5, 1.0, 1.5, 0.5], "regression"),  # not whole
    ([1.0, 2.0, 1.0, 2.0], "classification"),  # whole numbers written as floats
])
def test_task_rule(values: list, task: str) -> None:
    assert infer_task(pd.Series(values))[0] == task


def test_a_file_is_named_after_its_stem_and_infers_its_task(tmp_path: Path) -> None:
    frame = sensor_table()
    frame.to_csv(tmp_path / "plant.csv.gz", index=False)
    frame.to_parquet(tmp_path / "plant2.parquet")
    data = load_dataset(str(tmp_path / "plant.csv.gz"))
    assert (data.name, data.task, data.target, data.classes) == ("plant", "classification", "state",
                                                                 ["cold", "hot", "warm"])
    assert data.feature_names == ["t1", "t2", "humidity"]
    np.testing.assert_array_equal(data.y, pd.Categorical(frame["state"], ["cold", "hot", "warm"]).codes)
    assert "read as classification" in data.task_note
    parquet = load_dataset(str(tmp_path / "plant2.parquet"))
    assert parquet.name == "plant2" and np.array_equal(parquet.x, data.x)
    # another target column, the task given: a regression, nothing inferred
    frame.drop(columns="state").to_csv(tmp_path / "humid.csv", index=False)
    humid = load_dataset(str(tmp_path / "humid.csv"), target="t2", task="regression")
    assert humid.task == "regression" and humid.classes is None and humid.task_note == ""
    assert humid.feature_names == ["t1", "humidity"] and np.array_equal(humid.y, frame["t2"].to_numpy())
    assert dataset_name("a/b/fried_like.parquet") == "fried_like" and dataset_name("fried") == "fried"


def test_registered_datasets_keep_their_task() -> None:
    check_registered_options("wine_quality", None, None)
    check_registered_options("wine_quality", "quality", "regression")
    with pytest.raises(ProtocolError, match="registered dataset 'wine_quality' is a regression"):
        check_registered_options("wine_quality", None, "classification")
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        check_registered_options("nope", None, None)


# --- refusals: exit status 2 and one sentence naming the column --------------------------------------------------

@pytest.mark.parametrize("change, options, message", [
    (lambda f: f.assign(t2=["x", *f["t2"][1:]]), [],
     "has the non-numeric value 'x' in the feature column 't2' (row 1); features must be numbers"),
    (lambda f: f.assign(t1=[np.nan, *f["t1"][1:]]), [],
     "has a missing value in column 't1' on row 1 (1 in all); fill or drop those rows first"),
    (lambda f: f.assign(state=1.5), ["--task", "regression"],
     "of the target column 'state' of"),
    (lambda f: f.assign(state="on"), [], "holds a single class ('on'); classification needs at least two"),
    (lambda f: f, ["--target", "pressure"], "has no column 'pressure'; pass --target with one of its columns"),
    (lambda f: f.assign(state=["rare", *f["state"][1:]]), [], "has a class with a single row ('rare')"),
    (lambda f: f, ["--task", "regression"], "holds values that are no finite numbers, so it cannot be a regression"),
])
def test_refusals(tmp_path: Path, capsys, change, options: list[str], message: str) -> None:
    path = tmp_path / "table.csv"
    change(sensor_table(40)).to_csv(path, index=False)
    if "of the target column" in message:  # a constant regression target
        message = "has the same value in every row; there is nothing to learn"
    for main, extra in ((tuning_script.main, ["--n_bits", "2"]), (best_script.main, [])):
        status = main(["--dataset", str(path), *extra, *options, "--result_folder", str(tmp_path), "--quiet"])
        err = capsys.readouterr().err
        assert status == 2 and message in err and err.count("\n") == 1, err
        if main is best_script.main:
            assert "no tuning files" not in err  # the data is checked before the tuning files are looked for


def test_a_missing_file_and_a_registered_stem_are_refused(tmp_path: Path, capsys) -> None:
    assert tuning_script.main(["--dataset", str(tmp_path / "none.csv"), "--n_bits", "2"]) == 2
    assert "none.csv does not exist or is not a file" in capsys.readouterr().err
    sensor_table(40).to_csv(tmp_path / "fried.csv", index=False)
    assert tuning_script.main(["--dataset", str(tmp_path / "fried.csv"), "--n_bits", "2"]) == 2
    err = capsys.readouterr().err
    assert "'fried' (of" in err and "is a registered dataset; rename the file" in err


# --- stratified splits, unscaled classes ---------------------------------------------------------------------------

def test_classification_splits_are_stratified_and_keep_the_classes(tmp_path: Path) -> None:
    sensor_table(400).to_csv(tmp_path / "plant.csv", index=False)
    data = load_dataset(str(tmp_path / "plant.csv"))
    rest, _, y_rest, y_test = train_test_split(np.arange(400), data.y, test_size=0.1, random_state=42,
                                               stratify=data.y)
    folds = list(StratifiedKFold(n_splits=2, shuffle=True, random_state=42).split(rest, y_rest))
    got = list(tuning_folds(data.x, data.y, 2, stratify=True))
    assert len(got) == 2
    for split, (_, val_rows) in zip(got, folds):
        assert split.y_scaler is None
        np.testing.assert_array_equal(split.parts["val"][1], y_rest[val_rows])  # class indices, not standardized
        np.testing.assert_array_equal(split.parts["test"][1], y_test)
        raw = split.parts["val"][0][:, 2] * split.x_scaler.scale_[2] + split.x_scaler.mean_[2]
        np.testing.assert_allclose(raw, data.x[rest[val_rows], 2].astype(np.float32), rtol=1e-6)
    # each class's share of the 40 test rows is its share of all 400 rows, to one row
    counts, test_counts = np.bincount(data.y.astype(int)), np.bincount(y_test.astype(int))
    assert np.all(np.abs(test_counts - counts * 0.1) <= 1)


# --- the engine trains classifiers as the plain loop does -----------------------------------------------------------

def test_cross_entropy_gradient_by_hand() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]], dtype=torch.float64)  # [G=1, B=2, C=2]
    summed = torch.zeros(1, dtype=torch.float64)
    grad = _cross_entropy_grad(logits, torch.tensor([1.0, 0.0], dtype=torch.float64), summed)
    # softmax rows (1/4, 3/4) and (1/2, 1/2), minus the one-hot of classes 1 and 0, over B = 2
    torch.testing.assert_close(grad, torch.tensor([[[0.125, -0.125], [-0.25, 0.25]]], dtype=torch.float64))
    torch.testing.assert_close(summed, torch.tensor([-math.log(0.75) - math.log(0.5)], dtype=torch.float64))


@pytest.mark.parametrize("hidden_layers", [0, 2])
def test_engine_equals_plain_loop_for_cross_entropy(hidden_layers: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(700, 4, dtype=torch.float64)
    y = (x[:, 0] > 0).double() + (x[:, 1] > 0.5).double()  # three classes
    setting = Setting(0.0, 1e-2, hidden_layers, 8, 3, 1e-3, 0.0)
    context = QuantizerContext.from_training_rows(x, 3)
    for name in ("FP", "Pr-QQ", "Bw-SQ", "LSQ"):
        torch.manual_seed(1)
        plain = build_model(METHODS[name], setting, context, 3).double()
        stacked = copy.deepcopy(plain)
        plain_loss = train_model(plain, x, y, setting, seed=5)
        stacked_loss = train_models([stacked], x, y, setting, seed=5)[0]
        assert stacked_loss == pytest.approx(plain_loss, rel=1e-6)  # the engine sums the loss in float32
        for p, q in zip(plain.parameters(), stacked.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        # the evaluation: mean cross-entropy and accuracy, worked out from the class scores
        losses, accuracies = split_metrics(plain, {"all": (x, y)})
        plain.eval()
        plain.set_hard(True)
        with torch.no_grad():
            scores = plain(x)
        expected = -(scores.log_softmax(1)[torch.arange(700), y.long()]).mean().item()
        assert losses["all"] == pytest.approx(expected, rel=1e-12)
        assert accuracies["all"] == (scores.argmax(1) == y.long()).double().mean().item()


# --- classification end to end: tuning, best settings, the encoder, the analysis ----------------------------------

def test_classification_from_tuning_to_the_encoder(tmp_path: Path, capsys) -> None:
    frame = sensor_table(300)
    path = tmp_path / "plant.csv"
    frame.to_csv(path, index=False)
    results = tmp_path / "results"
    common = ["--result_folder", str(results), "--quiet", "--threads", "1", "--device", "cpu"]
    assert tuning_script.main(["--dataset", str(path), "--n_bits", "2", "--n_steps", "1", "--debug", *common]) == 0
    assert "plant: target 'state' read as classification (labels, not numbers)" in capsys.readouterr().err
    tuning = read_results(results / "plant" / "plant_hyperparameter_tuning_2bits_2iterations.csv", TUNING)
    accuracy_columns = [f"{s}_accuracy_{m}" for s in ("val", "test") for m in METHOD_NAMES]  # every registered method
    assert list(tuning.columns) == [*TUNING.columns(), *accuracy_columns]
    assert ((tuning[accuracy_columns] >= 0) & (tuning[accuracy_columns] <= 1)).all(axis=None)

    models = tmp_path / "models"
    assert best_script.main(["--dataset", str(path), "--n_steps", "1", "--methods", "Bw-SQ", "FP",
                             "--save_models", str(models), *common]) == 0
    best = read_results(results / "best_hyperparameter_multiple" / "plant_best_hyperparameter_test_multiple.csv", BEST)
    assert list(best.columns) == [*BEST.columns(), *accuracy_columns]
    row = best.iloc[0]
    # the chosen setting's validation accuracy is the tuning's mean over the folds
    assert row["val_accuracy_Bw-SQ"] == pytest.approx(tuning["val_accuracy_Bw-SQ"].mean(), abs=1e-12)
    # the test accuracy and cross-entropy, worked out from the saved model on the stratified test rows
    saved = load_model(models / "plant_2bits_Bw-SQ_run0.pt")
    assert saved.classes == ["cold", "hot", "warm"] and (saved.y_mean, saved.y_scale) == (0.0, 1.0)
    x = frame[["t1", "t2", "humidity"]].to_numpy()
    _, x_test, _, label_test = train_test_split(x, frame["state"].to_numpy(), test_size=0.1, random_state=42,
                                                stratify=frame["state"].to_numpy())
    assert row["test_accuracy_Bw-SQ"] == pytest.approx(np.mean(saved.predict(x_test) == label_test), abs=1e-12)
    with torch.no_grad():
        scores = saved.model(saved.standardize(x_test)).double()
    codes = torch.tensor(pd.Categorical(label_test, saved.classes).codes, dtype=torch.long)
    cross_entropy = -scores.log_softmax(1)[torch.arange(len(codes)), codes].mean().item()
    assert row["test_loss_Bw-SQ"] == pytest.approx(cross_entropy, rel=1e-6)

    # the device encoder, unchanged, and the server's labels from its payloads
    assert export_main([str(models / "plant_2bits_Bw-SQ_run0.pt"), "--out", str(tmp_path / "encoder")]) == 0
    encoder = build_encoder(saved)
    payload = b"".join(pack(encoder.indices(row[None]), saved.bits) for row in x_test.astype(np.float32))
    labels = cloud_predict(saved, payload, raw_units=True, per_sample=True)
    np.testing.assert_array_equal(labels, saved.predict(x_test))
    assert cloud_predict(saved, payload, per_sample=True).shape == (len(x_test), 3)  # class scores

    # the analysis names the metric: accuracy (higher is better) and cross-entropy tables, accuracy in the figures
    out = tmp_path / "analysis"
    folder = results / "best_hyperparameter_multiple"
    assert create_result_tables.main(["--results_dir", str(folder), "--datasets", "plant", "--out_dir", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {f"{t}_{m}.{e}" for t in ("table2", "ablation", "confidence")
                                               for m in ("accuracy", "cross_entropy") for e in ("csv", "tex", "md")}
    frames, _ = load_results(folder, ["plant"])
    figure = plots.plot_lines(long_losses(frames))
    assert figure.axes[0].get_ylabel() == "mean test accuracy"


def test_accuracy_tables_mark_the_maximum(tmp_path: Path) -> None:
    columns = BEST.columns(accuracy=True)
    rows = []
    for step, (fp, bw_sq, lsq) in enumerate([(0.90, 0.80, 0.79), (0.92, 0.82, 0.81)]):
        row = dict.fromkeys(columns, 1.0)
        row.update({"bits": 3, "step": step, "test_accuracy_FP": fp, "test_accuracy_Bw-SQ": bw_sq,
                    "test_accuracy_LSQ": lsq, "test_accuracy_Pr-MQ": 0.5, "test_accuracy_Pr-QQ": 0.5,
                    "test_accuracy_LLT4": 0.5, "test_accuracy_LLT9": 0.5})
        rows.append(row)
    folder = tmp_path / "best"
    folder.mkdir()
    pd.DataFrame(rows, columns=list(columns)).to_csv(folder / "plant_best_hyperparameter_test_multiple.csv",
                                                     index=False)
    out = tmp_path / "out"
    assert create_result_tables.main(["--results_dir", str(folder), "--datasets", "plant", "--out_dir", str(out)]) == 0
    table = (out / "table2_accuracy.md").read_text()
    # means: FP 0.91 (not marked: full precision), Bw-SQ 0.81 the maximum, LSQ 0.80 within 2.5 % of it
    cells = [cell.strip() for cell in table.splitlines()[-1].strip("|").split("|")]
    assert cells == ["plant", "3", "0.910", "0.500", "0.500", "0.500", "0.500", "<u>0.800</u>", "**0.810**"]


def test_classifiers_train_alike_with_and_without_cuda_graphs(device: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(1100, 3, device=device)
    y = (x[:, 0] > 0).float() + (x[:, 2] > 0.3).float()
    setting = Setting(0.0, 1e-2, 2, 16, 2, 1e-3, 0.2)
    context = QuantizerContext.from_training_rows(x, 2)
    torch.manual_seed(1)
    models = [build_model(METHODS[name], setting, context, 3) for name in ("Bw-SQ", "FP")]
    copies = copy.deepcopy(models)
    losses = train_models(models, x, y, setting, seed=3, cuda_graphs=True)
    assert losses == train_models(copies, x, y, setting, seed=3, cuda_graphs=False)
    for model, other in zip(models, copies):
        for p, q in zip(model.parameters(), other.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert all(0 < loss < 2 for loss in losses)  # cross-entropies near log(3) = 1.1 after two epochs


def test_a_regression_table_writes_the_paper_s_columns(tmp_path: Path, capsys) -> None:
    frame = sensor_table(200).drop(columns="state")
    frame["yield"] = frame["t1"] * 2.5 + frame["humidity"] / 10  # 200 distinct values: a regression
    frame.to_csv(tmp_path / "farm.csv.gz", index=False)
    args = ["--dataset", str(tmp_path / "farm.csv.gz"), "--n_bits", "3", "--n_steps", "1", "--debug",
            "--result_folder", str(tmp_path / "results"), "--quiet", "--threads", "1", "--device", "cpu"]
    assert tuning_script.main(args) == 0
    assert "farm: target 'yield' read as regression (numbers, not <= 20 distinct)" in capsys.readouterr().err
    tuning = read_results(tmp_path / "results" / "farm" / "farm_hyperparameter_tuning_3bits_2iterations.csv", TUNING)
    assert list(tuning.columns) == list(TUNING.columns()) and len(tuning) == 2
