"""The method and task registries: one entry per method and per task, every preset has its entry, no method or task
name spelled out elsewhere in the package, every method builds (or is refused in one line) on every quant."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lorasweep import estimate
from lorasweep.config import QUANTS, UNSUPPORTED, compose, validate
from lorasweep.errors import ConfigError
from lorasweep.model import peft_config, targets
from lorasweep.tasks import TASKS, component
from lorasweep.variants import METHODS

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "lorasweep"


# config.validate() and its helpers still name a task: lorasweep/schema.py (issue 25, the lead's branch) replaces
# them. Only these functions may, and only until then.
def _names_outside_registries() -> list[str]:
    """Every string constant in the package equal to a method or task name, outside variants.py and tasks.py and
    outside docstrings, as file:line (function)."""
    names = set(METHODS) | set(TASKS)
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("variants.py", "tasks.py"):
            continue
        tree = ast.parse(path.read_text())
        docs = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        owner = {}  # each node's innermost enclosing function (ast.walk meets outer functions first)
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                owner.update({id(n): func.name for n in ast.walk(func)})
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docs:
                where = owner.get(id(node), "module")
                hits.append(f"{path.relative_to(REPO)}:{node.lineno} ({where})")
    return sorted(set(hits))


def test_registry_keys_are_the_adapter_presets():
    presets = {p.stem for p in (REPO / "conf" / "adapter").glob("*.yaml")}
    assert set(METHODS) == presets
    for name in presets:  # each preset picks its own entry
        assert compose([f"adapter={name}"]).adapter.variant == name


def test_no_method_or_task_name_literal_outside_the_registries():
    assert _names_outside_registries() == []


def test_the_literal_scan_finds_a_name_where_one_is_spelled(tmp_path, monkeypatch):
    """The scan above is not vacuous: a module with a method name and a task name in code is reported."""
    import tests.test_registry as me

    (tmp_path / "lorasweep").mkdir()
    (tmp_path / "lorasweep" / "x.py").write_text('"""lora in a docstring is fine."""\nA = "dora"\nB = ["seq_cls"]\n')
    monkeypatch.setattr(me, "PACKAGE", tmp_path / "lorasweep")
    monkeypatch.setattr(me, "REPO", tmp_path)
    assert me._names_outside_registries() == ["lorasweep/x.py:2 (module)", "lorasweep/x.py:3 (module)"]


def test_registries_import_no_torch():
    code = "import sys, lorasweep.variants, lorasweep.tasks, lorasweep.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_every_entry_names_fields_and_components_that_exist():
    fields = set(compose([]).adapter)
    for name, m in METHODS.items():
        assert m.help and set(m.applies) <= fields | set(m.fields), name
        for path in m.callbacks:
            assert callable(component(path)), path
    for name, t in TASKS.items():
        assert t.help and t.default_metric[0] in t.eval_metrics, name
        for path in (t.encode, t.collator, t.eval_outputs, t.preprocess_logits):
            assert path is None or callable(component(path)), path


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_builds_or_is_refused_in_one_line_on_every_quant(name, quant):
    """validate() refuses exactly the registry's quant_refused pairs, naming quant.method; every other pair builds
    its PEFT config (None: the base itself trains) and the estimator sizes it."""
    cfg = compose(["model=tiny_llama", "data=tweets_sft", f"adapter={name}", f"quant={quant}"])
    if (name, quant) in UNSUPPORTED:
        with pytest.raises(ConfigError) as err:
            validate(cfg, has_cuda=True)
        assert err.value.field == "quant.method" and "\n" not in str(err.value)
        return
    validate(cfg, has_cuda=True)
    pc = peft_config(cfg, targets(cfg, None)[0], 4)
    assert (pc is None) == METHODS[name].trains_base
    est = estimate.estimate(cfg, batch_size=1, seq_len=8)
    assert est["params"]["trainable"] > 0 and est["memory"]["optimizer"]["bytes"] > 0
