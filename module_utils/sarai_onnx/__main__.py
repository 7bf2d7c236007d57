"""Command line: python -m sarai_onnx <info|quantize|manifest|validate|tune> --params FILE.json [--check]

Prints one JSON object on stdout: the command's result, or {"failed": true, "msg": ...}.
Exit status 0 when the command succeeded, 1 when it failed. This is how a Windows build host runs
the same code as the Ansible modules (win_command + from_json on stdout).
"""

import argparse
import json
import sys
import traceback

from .commands import COMMANDS, run
from .env import stdout_to_stderr
from .errors import SaraiError


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sarai_onnx", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=sorted(COMMANDS))
    ap.add_argument("--params", required=True, help="JSON file with the module's parameters ('-' = stdin)")
    ap.add_argument("--check", action="store_true", help="check mode: report, change nothing")
    args = ap.parse_args(argv)
    try:
        if args.params == "-":
            params = json.load(sys.stdin)
        else:
            with open(args.params, encoding="utf-8-sig") as fh:  # -sig: PowerShell writes a BOM
                params = json.load(fh)
        if not isinstance(params, dict):
            raise SaraiError(f"--params {args.params} must hold a JSON object")
        with stdout_to_stderr():
            result = run(args.command, params, check_mode=args.check)
    except (OSError, ValueError) as exc:
        result = {"failed": True, "msg": f"cannot read --params {args.params}: {exc}"}
    except SaraiError as exc:
        result = {"failed": True, "msg": str(exc)}
    except Exception as exc:  # keep stdout valid JSON whatever happens
        result = {"failed": True, "msg": f"unexpected error: {type(exc).__name__}: {exc}",
                  "exception": traceback.format_exc()}
    result.setdefault("failed", False)
    result.pop("diff", None)
    print(json.dumps(result, sort_keys=True, default=str))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
