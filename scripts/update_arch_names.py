"""Regenerate repscope/arch_names/{timm,torchvision}_models.txt from the installed timm and torchvision.

The API validates `arch` against these lists without importing either library (repscope.architectures);
tests/unit/test_checkpoint_fields.py checks they equal the installed libraries' lists.
Usage: python scripts/update_arch_names.py
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "repscope" / "arch_names"


def current_lists() -> dict[str, tuple[str, list[str]]]:
    """{file name: (header line, names)}: timm.list_models() and torchvision's classification models."""
    import timm
    import torchvision
    import torchvision.models

    return {
        "timm_models.txt": (f"# timm {timm.__version__}: timm.list_models()", list(timm.list_models())),
        "torchvision_models.txt": (f"# torchvision {torchvision.__version__}: "
                                   "torchvision.models.list_models(module=torchvision.models)",
                                   list(torchvision.models.list_models(module=torchvision.models))),
    }


def main() -> None:
    for name, (header, names) in current_lists().items():
        (DATA / name).write_text("\n".join([header, *names]) + "\n")
        print(f"{DATA / name}: {len(names)} names")


if __name__ == "__main__":
    main()
