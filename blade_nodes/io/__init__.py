"""Files in and out: paths kept inside the output folder, params interchange, exporters."""
from .paths import (UnsafePathError, output_path, output_root, models_root, model_dirs, inside,
                    input_path)
from .params_io import ParamsFileError, load_params, save_params, load_official_result, FORMAT

__all__ = ["UnsafePathError", "output_path", "output_root", "models_root", "model_dirs", "inside",
           "input_path", "ParamsFileError", "load_params", "save_params", "load_official_result",
           "FORMAT"]
