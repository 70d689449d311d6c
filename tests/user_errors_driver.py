"""`python -m cct_jax.main ARGS` for every ARGS of a JSON list, each in a child forked from
this process after it has imported the entry point once: a case costs what the command
does, not the seconds of importing jax, flax, orbax and grain again. Prints a JSON list of
{'returncode', 'stdout', 'stderr'}, one per case, in order, to a file.

  python tests/user_errors_driver.py CASES.json RESULTS.json

CASES.json: a list of argument lists, e.g. [["--config=configs/demo.py", "--workdir=w"]].

A child runs the entry point itself (`cct_jax.main.cli`: absl's app.run with the project's
flag parser) and ends as the interpreter would: `sys.exit('text')` prints the text and
exits 1, an exception that escapes prints its traceback and exits 1.
"""

import json
import os
import sys
import tempfile
import traceback

from cct_jax import main  # pylint: disable=wrong-import-position


def exit_status(exit_: SystemExit) -> int:
  """The status the interpreter gives a process that ends in `exit_`, printing a message
  where it would."""
  if exit_.code is None:
    return 0
  if isinstance(exit_.code, int):
    return exit_.code
  print(exit_.code, file=sys.stderr)
  return 1


def run_child(args: list[str]) -> int:
  """In the child: the command's exit status."""
  sys.argv = ['cct_jax.main', *args]  # ml_collections reads overrides from sys.argv
  try:
    main.cli()
    return 0
  except SystemExit as exit_:
    return exit_status(exit_)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    return 1


def run_case(args: list[str]) -> dict:
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    pid = os.fork()
    if pid == 0:
      os.dup2(out.fileno(), 1)
      os.dup2(err.fileno(), 2)
      status = run_child(args)
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)  # no clean-up of the parent's state (atexit, jax's backends)
    _, wait_status = os.waitpid(pid, 0)
    out.seek(0)
    err.seek(0)
    return {'returncode': os.waitstatus_to_exitcode(wait_status),
            'stdout': out.read().decode(errors='replace'),
            'stderr': err.read().decode(errors='replace')}


if __name__ == '__main__':
  cases_path, results_path = sys.argv[1:]
  with open(cases_path) as f:
    cases = json.load(f)
  results = [run_case(args) for args in cases]
  with open(results_path, 'w') as f:
    json.dump(results, f)
