"""The VOC train step (configs/voc.py: 30 auxiliary decoders, 320 crops, bfloat16)
compiled for TPU slices on this CPU machine (`--mode=compile`), for README's table.

  TPU_LIBRARY_PATH=.venv/libtpu/libtpu/libtpu.so .venv/bin/python benchmarks/tpu_compile.py
  ... benchmarks/tpu_compile.py --rows=v5e-8,v5e-8-remat     # some rows

Each row is one run of the command line, in a child process, one after the other (a full
VOC step takes about 13 minutes to compile on 2 cores):

  python -m cct_jax.main --config=configs/voc.py --mode=compile --workdir=W \\
      --config.model.dtype=bfloat16 --config.compile.topology=T \\
      --config.data.batch_size_labelled=B --config.data.batch_size_unlabelled=B [remat]

with B the per-chip batch times the slice's chips. Prints a Markdown table and writes
benchmarks/results/tpu_compile.json (each row's report, as --mode=compile writes it).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'tpu_compile.json')
REMAT = "--config.model.remat=('trunk','decoders')"

# name -> (topology, chips, images per chip of each batch, remat, steps compiled)
ROWS = {
    'v5e-8': ('v5e:2x4', 8, 10, False, 'train'),
    'v5e-8-remat': ('v5e:2x4', 8, 10, True, 'train,eval'),
    'v5e-8-remat-16': ('v5e:2x4', 8, 16, True, 'train'),
    'v5e-8-remat-24': ('v5e:2x4', 8, 24, True, 'train'),
    'v5e-8-remat-48': ('v5e:2x4', 8, 48, True, 'train'),
    'v6e-8': ('v6e:2x4', 8, 10, False, 'train'),
    'v4-8': ('v4:2x2x1', 4, 10, False, 'train'),
    'v5p-8': ('v5p:2x2x1', 4, 10, False, 'train'),
    'v5e-16-remat': ('v5e:4x4', 16, 10, True, 'train'),
}


def command(topology: str, chips: int, per_chip: int, remat: bool, steps: str,
            workdir: str) -> list[str]:
  batch = chips * per_chip
  return [sys.executable, '-m', 'cct_jax.main', '--config=configs/voc.py', '--mode=compile',
          f'--workdir={workdir}', '--config.model.dtype=bfloat16',
          f'--config.compile.topology={topology}', f'--config.compile.steps={steps}',
          f'--config.data.batch_size_labelled={batch}',
          f'--config.data.batch_size_unlabelled={batch}', '--compilation_cache=',
          *([REMAT] if remat else [])]


def table(results: dict) -> str:
  lines = ['| slice | topology | chips (hosts) | per chip | remat | step | fits | '
           'per-device total | temporaries | TFLOP per device | bound ms | images/s bound '
           '| compile s |', '|' + '---|' * 13]
  for name, row in results.items():
    report = row['report']
    for step_name, step in report['steps'].items():
      memory = step.get('memory_bytes')
      gb = lambda key: f"{memory[key] / 1e9:.2f} GB" if memory else ''
      lines.append(
          f"| {name} | {report['topology']} | {row['chips']} ({report['processes']}) | "
          f"{row['per_chip']} + {row['per_chip']} | {'on' if report['remat'] else 'off'} | "
          f"{step_name} | {'yes' if step['fits'] else 'no'} | {gb('total')} | "
          f"{gb('temporaries') or step.get('xla_message', '')} | "
          + (f"{step['flops_per_device'] / 1e12:.2f} | {1e3 * step['step_bound_s']:.0f} | "
             f"{step['images_per_s_bound']:.0f}" if memory else ' | | ')
          + f" | {step['compile_s']:.0f} |")
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rows', default=','.join(ROWS), help=f'of {", ".join(ROWS)}')
  parser.add_argument('--out', default=RESULTS)
  args = parser.parse_args()
  if not os.environ.get('TPU_LIBRARY_PATH'):
    sys.exit('set TPU_LIBRARY_PATH (make test installs libtpu in .venv/libtpu)')
  results = {}
  if os.path.exists(args.out):  # rows measured before are kept
    with open(args.out) as f:
      results = json.load(f)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  for name in args.rows.split(','):
    topology, chips, per_chip, remat, steps = ROWS[name]
    with tempfile.TemporaryDirectory() as workdir:
      cmd = command(topology, chips, per_chip, remat, steps, workdir)
      print(' '.join(cmd[1:]), flush=True)
      subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
      with open(os.path.join(workdir, f"compile_{topology.replace(':', '_')}.json")) as f:
        results[name] = {'chips': chips, 'per_chip': per_chip, 'command': cmd[1:],
                         'report': json.load(f)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)
    print(table({name: results[name]}), flush=True)
  print(table(results))


if __name__ == '__main__':
  main()
