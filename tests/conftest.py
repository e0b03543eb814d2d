import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", message=".*")  # third-party deprecation chatter

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# fp32 tolerance for comparing two computations of the same activation
FP32_ATOL = 1e-5


@pytest.fixture(scope="session")
def smollm2_tl():
    import hooked

    return hooked.load_model("smollm2-135m-instruct", backend="tl")


@pytest.fixture(scope="session")
def smollm2_hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hooked.packaged import ensure_cached

    d = ensure_cached("smollm2-135m-instruct")
    return AutoModelForCausalLM.from_pretrained(str(d), attn_implementation="eager").eval(), AutoTokenizer.from_pretrained(str(d))
