"""Reading and writing open_lth / ElasticLTH run folders (docs/interop.md).

* :mod:`elth_cli.interop.run_layout`: the folder's files and their names (``mask.pth``,
  ``model_ep{E}_it{I}.pth``, ``sparsity_report.json``), steps as open_lth names them, the
  ``weights_only`` loading of ``.pth`` files, the reference's key prefix;
* :mod:`elth_cli.interop.importer`: :func:`import_run`, a run folder read into a ticket;
* :mod:`elth_cli.interop.exporter`: :func:`plan_export` and :func:`export_ticket`, a ticket written
  as a run folder;
* :mod:`elth_cli.interop.state_dict`: :func:`export_state_dict`, a ticket's masked weights as the plain
  state dict its model class loads (timm's, torchvision's, elth's), its masks beside it.

This face holds the names the commands, the tests and docs/interop.md use.
"""

from __future__ import annotations

from elth_cli.interop.exporter import ExportPlan, export_ticket, plan_export
from elth_cli.interop.importer import IMPORT_KEY, ImportResult, import_record, import_run
from elth_cli.interop.state_dict import StateDictExport, export_state_dict, loading_model, masks_path
from elth_cli.interop.run_layout import (
    LOGGER_FILE, MASK_FILE, MODEL_RE, REPORT_FILE, Step, StepSpec, from_reference_keys, load_tensor_dict, model_files,
    parse_step_spec, summary, to_reference_keys,
)

__all__ = [
    "ExportPlan", "IMPORT_KEY", "ImportResult", "LOGGER_FILE", "MASK_FILE", "MODEL_RE", "REPORT_FILE", "Step",
    "StepSpec", "export_ticket", "from_reference_keys", "import_record", "import_run", "load_tensor_dict",
    "model_files", "parse_step_spec", "plan_export", "summary", "to_reference_keys", "StateDictExport",
    "export_state_dict", "loading_model", "masks_path",
]
