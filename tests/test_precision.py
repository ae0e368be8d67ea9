"""--dtype: which format `auto` picks, where each parameter lives, what stays float32, and that a
bfloat16 run is recorded, reloaded and predicts end to end."""

import json

import pytest
import torch
import yaml

from pretune import precision
from pretune.api import RunConfig, build_method, config_from_dict, load_run
from pretune.bench.arms import RunSpec
from pretune.bench.harness import run_key
from pretune.cli import main
from pretune.precision import Precision, resolve_precision
from pretune.training.trainer import TrainConfig, loss_fn, target_tensor

# ---------------------------------------------------------------- what `auto` picks


def test_auto_picks_bfloat16_on_a_cpu_that_computes_it(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "bfloat16" and "avx512_bf16" in chosen.reason
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_tile", "amx_bf16"})
    assert resolve_precision("auto", "cpu").name == "bfloat16"


def test_auto_picks_float32_where_bfloat16_would_be_emulated(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "fma"})
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "float32" and "no native bfloat16" in chosen.reason
    assert not chosen.is_reduced


def test_cpu_flags_come_from_torchs_capability_report_else_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False, "cpu_name": "X"})
    assert precision.cpu_bfloat16_features() == ["avx512_bf16"]
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert precision.cpu_bfloat16_features() == []
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
    assert {"amx_bf16", "avx2"} <= precision.proc_cpuinfo_flags(cpuinfo)
    assert precision.proc_cpuinfo_flags(tmp_path / "missing") == set()


def test_auto_on_cuda_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Mocked GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda:0").name == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda").name == "float32"


def test_an_explicit_dtype_is_taken_as_given(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    assert resolve_precision("bfloat16", "cpu").name == "bfloat16"
    assert resolve_precision("float32", "cpu").name == "float32"


def test_an_unknown_dtype_is_one_line_and_exit_2(tmp_path, task_folder, capsys):
    code = main(["train", "--task", str(task_folder), "--model", "bert-tiny", "--dtype", "bf16", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown --dtype 'bf16'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- where parameters live


def _method(backbone, task, method, dtype="bfloat16", train=None, **options):
    config = RunConfig(task="unused", method=method, method_options=options, train=train, dtype=dtype,
                       training=TrainConfig(device="cpu"))
    return build_method(config, task, backbone)


def _dtypes(method, trainable: bool) -> set:
    return {p.dtype for p in method.parameters() if p.requires_grad == trainable}


def test_frozen_body_is_bfloat16_and_the_prompt_float32(tiny_causal, task):
    method = _method(tiny_causal, task, "ptuning")
    assert _dtypes(method, trainable=True) == {torch.float32}
    assert _dtypes(method, trainable=False) == {torch.bfloat16}
    assert method.model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_lora_adapters_train_in_float32_over_a_bfloat16_body(tiny_causal, task):
    method = _method(tiny_causal, task, "pet", train="lora")
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert _dtypes(method, trainable=True) == {torch.float32}
    assert _dtypes(method, trainable=False) == {torch.bfloat16}


def test_a_module_with_a_trainable_parameter_keeps_all_its_own_in_float32(tiny_mlm, task):
    """BitFit: a Linear whose bias trains keeps its weight float32 too; layer norms are float32 always."""
    method = _method(tiny_mlm, task, "pet", train="bitfit")
    for module in method.model.modules():
        own = list(module.parameters(recurse=False))
        if any(p.requires_grad for p in own) or isinstance(module, torch.nn.LayerNorm):
            assert {p.dtype for p in own} == {torch.float32}, type(module).__name__
    # the word embeddings are tied to the output layer, whose bias trains: float32; the position table is not
    assert method.model.bert.embeddings.position_embeddings.weight.dtype == torch.bfloat16


def test_full_fine_tuning_keeps_float32_master_weights(tiny_causal, task):
    method = _method(tiny_causal, task, "pet", train="full")
    assert {p.dtype for p in method.parameters()} == {torch.float32}
    assert method.precision.name == "bfloat16"  # it computes under autocast all the same


def test_float32_leaves_every_parameter_float32(tiny_causal, task):
    method = _method(tiny_causal, task, "ptuning", dtype="float32")
    assert {p.dtype for p in method.parameters()} == {torch.float32}
    with method.autocast():
        assert not torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------- what stays float32


@pytest.mark.parametrize("method,options", [
    ("pet", {}), ("ptuning", {}), ("ptuning", {"readout": "head"}), ("deep-prompt", {"prompt_length": 2}),
    # words of several tokens over a frozen body: their normaliser reads the whole output layer, held in
    # bfloat16, in float32
    ("ptuning", {"verbalizer": "positive=phenomenally negative=abysmally"}),
    ("ptuning", {"verbalizer": "positive=phenomenally negative=abysmally", "label_tokens": "learned"}),
])
def test_label_scores_and_the_loss_are_float32(tiny_causal, task, method, options):
    built = _method(tiny_causal, task, method, **options)
    items = built.featurize(task.train[:4], progress=False)
    batch = built.collate(items)
    with built.autocast():
        assert torch.is_autocast_enabled("cpu")
        scores = built(batch)
    assert scores.dtype == torch.float32
    loss = loss_fn(task, scores, target_tensor(task, task.targets(task.train[:4])))
    assert loss.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in built.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


def test_head_features_are_encoded_in_the_format_and_cached_in_float32(tiny_encoder, task):
    method = _method(tiny_encoder, task, "head")
    items = method.featurize(task.train, progress=False)
    assert items[0]["features"].dtype == torch.float32
    assert method.collate(items[:2]).features.dtype == torch.float32
    assert method(method.collate(items[:2])).dtype == torch.float32


# ---------------------------------------------------------------- recorded and read back


def test_old_run_folders_without_a_dtype_load_as_float32():
    saved = {"task": "sst-2", "method": "pet", "training": {"steps": 4}}
    assert config_from_dict(saved).dtype == "float32"
    assert config_from_dict({**saved, "dtype": "bfloat16", "dtype_chosen": "auto: ..."}).dtype == "bfloat16"


def test_bench_keys_of_float32_runs_are_those_from_before_dtype():
    """Runs recorded before --dtype existed were float32: their keys must not change."""
    from pretune.bench.arms import ARMS

    spec = RunSpec(task="sst-2", model="m", seed=13)
    assert "dtype" not in spec.protocol()
    assert run_key(ARMS["pet"], spec)["config"] == "056f4e9614"  # the committed results.json's key
    assert run_key(ARMS["pet"], RunSpec(task="sst-2", model="m", seed=13, dtype="bfloat16"))["config"] != "056f4e9614"


@pytest.mark.slow
def test_a_bfloat16_run_trains_records_its_format_and_predicts(tmp_path, task_folder, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", str(task_folder), "--model", "bert-tiny", "--method", "ptuning", "--steps", "3",
            "--batch-size", "4", "--dtype", "bfloat16", "--quiet", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["dtype"] == "bfloat16" and config["dtype_chosen"] == "asked for with --dtype"
    assert json.loads((out / "metrics.json").read_text())["dtype"] == "bfloat16"
    predictor = load_run(out)
    assert predictor.method.precision.name == "bfloat16"
    assert predictor.method.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert load_run(out, dtype="float32").method.precision == Precision("float32", "asked for with --dtype")
    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", "--run", str(out), "--input", str(task_folder / "test.jsonl"), "--output", str(predictions)]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 8 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_attention_trains_in_float32_on_a_cpu_and_infers_as_before(tiny_causal, task):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    _method(tiny_causal, task, "ptuning")  # a reduced format installs it
    attention = ALL_ATTENTION_FUNCTIONS["sdpa"]
    module = tiny_causal.model.model.layers[0].self_attn
    torch.manual_seed(0)  # any values: the two attentions are compared exactly
    q, k, v = (torch.randn(2, 4, 5, 8, dtype=torch.bfloat16) for _ in range(3))
    with torch.inference_mode():
        assert torch.equal(attention(module, q, k, v, None)[0], sdpa_attention_forward(module, q, k, v, None)[0])
    q.requires_grad_(True)
    out = attention(module, q, k, v, None)[0]
    expected = sdpa_attention_forward(module, q.float(), k.float(), v.float(), None)[0].to(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16
