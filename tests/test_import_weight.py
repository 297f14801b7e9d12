"""Ray's read and write tasks for tagging run in processes that never touch the model.

Each such worker imports the modules its task was pickled from. If those pull in torch
and transformers, every read/write worker pays about 6 s of CPU and 400 MiB (measured:
the 10x tagging run's read workers went from 1,945 to 187 MiB PSS in total once they no
longer imported torch). A fresh interpreter shows what an import really loads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

LIGHT = [
    "pipelines.tagging.reader",  # the datasource (read tasks)
    "pipelines.tagging.sink",  # the datasink (write tasks)
    "pipelines.tagging.config",  # TagPlan travels with every task
    "pipelines.tagging.preprocess",  # preprocessing tasks (--preprocess tasks)
    "pipelines.training.worker",  # Ray Train's controller unpickles the training function
    "ner_core.documents",
    "ner_core.labels",
]


@pytest.mark.parametrize("module", LIGHT)
def test_task_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing {module} loads {out}"


def test_the_model_classes_load_on_first_use_and_register_with_auto_classes():
    code = (
        "import sys, ner_core; assert 'torch' not in sys.modules; "
        "from ner_core import EncoderDecoderTagger; "
        "from transformers import AutoConfig; "
        "print(EncoderDecoderTagger.__name__, type(AutoConfig.for_model('encoder-decoder-tagger')).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "EncoderDecoderTagger EncoderDecoderTaggerConfig"


def test_the_tagging_driver_checks_a_model_without_loading_torch():
    # The driver only reads the model's files (ner_core.model_files); the actors load it.
    # Importing torch and transformers there cost 3.4 s of a 20,000-row job's start on 2 cores.
    code = (
        "import sys; from pipelines.tagging.driver import run_tagging; from pipelines.tagging.actor import TagActor; "
        "from pipelines.tagging.model import check_model; info = check_model('minilm'); "
        "print(info.model_type, info.max_positions, sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "bert 512 []"


def test_quieting_the_console_loads_no_transformers_yet_its_bars_stay_off():
    # Every job quiets Ray's logs before ray.init; importing transformers there only to switch
    # its progress bars off cost the tagging driver 0.7 s of CPU on 2 cores.
    code = (
        "import sys; from pipelines.console.terminal import quiet_ray_logs; quiet_ray_logs(); "
        "print('transformers' in sys.modules); "
        "from transformers.utils import logging; print(logging.is_progress_bar_enabled())"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == ["False", "False"]
