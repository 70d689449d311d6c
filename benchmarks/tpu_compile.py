"""The VOC train step (configs/voc.py: 30 auxiliary decoders, 320 crops, bfloat16)
compiled for TPU slices on this CPU machine (`--mode=compile`), for README's table: does
it fit, and XLA's estimate of its time (the compiler's cost model, not a measurement).

  TPU_LIBRARY_PATH=.venv/libtpu/libtpu/libtpu.so .venv/bin/python benchmarks/tpu_compile.py
  ... benchmarks/tpu_compile.py --rows=v5e-8,v5e-8-remat     # some rows

Each row is one run of the command line, in a child process, one after the other (a full
VOC step takes 6 to 13 minutes to compile on 2 cores, all rows about two hours). Rows
already in the results file with XLA's estimate are kept, not run again (--redo runs them):
stopped, the command resumes.

  python -m cct_jax.main --config=configs/voc.py --mode=compile --workdir=W \\
      --config.model.dtype=bfloat16 --config.compile.topology=T \\
      --config.data.batch_size_labelled=B --config.data.batch_size_unlabelled=B [remat]

with B the per-chip batch times the slice's chips. Prints a Markdown table and writes
benchmarks/results/tpu_compile.json (each row's report, as --mode=compile writes it).
A paper run's chip-hours: VOC's 9,118 unlabelled images at 1464 labels, 50 epochs, at the
row's global batch, at XLA's estimated step time. Each row names the commit it was
compiled at (`code`).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'tpu_compile.json')
REMAT = "--config.model.remat=('trunk','decoders')"
# App. F's inference: five scales and their flips, each a forward pass of the canvas.
MULTI_SCALE_FLIP = ('--config.eval.scales=(0.5,0.75,1.0,1.25,1.5)', '--config.eval.flip=True')
PAPER_UNLABELLED, PAPER_EPOCHS = 9118, 50

# name -> (topology, chips, images per chip of each batch, remat, steps compiled, flags)
ROWS = {
    'v5e-8': ('v5e:2x4', 8, 10, False, 'train', ()),
    'v5e-8-remat': ('v5e:2x4', 8, 10, True, 'train,eval', ()),
    'v5e-8-multi-scale-flip': ('v5e:2x4', 8, 10, True, 'eval', MULTI_SCALE_FLIP),
    'v5e-8-remat-16': ('v5e:2x4', 8, 16, True, 'train', ()),
    'v5e-8-remat-36': ('v5e:2x4', 8, 36, True, 'train', ()),
    'v5e-8-remat-40': ('v5e:2x4', 8, 40, True, 'train', ()),
    'v5e-8-remat-48': ('v5e:2x4', 8, 48, True, 'train', ()),
    'v4-8': ('v4:2x2x1', 4, 10, False, 'train', ()),
    'v5p-8': ('v5p:2x2x1', 4, 10, False, 'train', ()),
    'v6e-8': ('v6e:2x4', 8, 10, False, 'train', ()),
    'v5e-16-remat': ('v5e:4x4', 16, 10, True, 'train', ()),
}


def command(topology: str, chips: int, per_chip: int, remat: bool, steps: str,
            flags: tuple, workdir: str) -> list[str]:
  batch = chips * per_chip
  return [sys.executable, '-m', 'cct_jax.main', '--config=configs/voc.py', '--mode=compile',
          f'--workdir={workdir}', '--config.model.dtype=bfloat16',
          f'--config.compile.topology={topology}', f'--config.compile.steps={steps}',
          f'--config.data.batch_size_labelled={batch}',
          f'--config.data.batch_size_unlabelled={batch}', '--compilation_cache=',
          *([REMAT] if remat else []), *flags]


def estimated(row: dict) -> bool:
  """Whether every step of the row that compiled carries XLA's estimate."""
  return all('estimate' in step or 'memory_bytes' not in step
             for step in row['report']['steps'].values())


def estimate_columns(row: dict, step_name: str, step: dict) -> list[str]:
  """XLA's estimated ms per step, images/s per chip, MFU, and a paper run's chip-hours."""
  estimate = step.get('estimate')
  if not estimate:
    return [''] * 5
  chips, seconds = row['chips'], estimate['step_s']
  chip_hours = ''
  if step_name == 'train':
    steps = PAPER_EPOCHS * PAPER_UNLABELLED / (chips * row['per_chip'])
    chip_hours = f'{steps * seconds * chips / 3600:.0f}'
  return [f'{1e3 * seconds:.0f}', f"{1e3 * estimate['hbm_bound_s']:.0f}",
          f"{estimate['images_per_s'] / chips:.1f}", f"{100 * estimate['mfu']:.1f}%",
          chip_hours]


def not_fitting(step: dict) -> str:
  """XLA's out-of-memory message, short: '16.98 GB needed, XLA has 15.75 GB'."""
  sizes = re.search(r'\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)',
                    step.get('xla_message', ''))
  return (f'{sizes.group(1)} GB needed, XLA has {sizes.group(2)} GB' if sizes
          else step.get('xla_message', ''))


def table(results: dict) -> str:
  lines = ['| slice | topology | chips (hosts) | per chip | remat | step | fits | '
           'per-device total | temporaries | TFLOP per device | FLOPs bound ms | '
           'XLA estimate ms | HBM bound ms | images/s per chip | MFU | chip-hours per paper '
           'run | compile s | code |', '|' + '---|' * 18]
  for name in sorted(results, key=lambda n: list(ROWS).index(n) if n in ROWS else len(ROWS)):
    row = results[name]
    report = row['report']
    for step_name, step in report['steps'].items():
      memory = step.get('memory_bytes')
      gb = lambda key: f"{memory[key] / 1e9:.2f} GB" if memory else ''
      cells = [name, report['topology'], f"{row['chips']} ({report['processes']})",
               (f"{row['per_chip']} + {row['per_chip']}" if step_name == 'train' else
                f"{step['images_per_step'] // report['devices']} canvas"),
               'on' if report['remat'] else 'off',
               step_name, 'yes' if step['fits'] else 'no', gb('total'),
               gb('temporaries') or not_fitting(step),
               f"{step['flops_per_device'] / 1e12:.2f}" if memory else '',
               f"{1e3 * step['step_bound_s']:.0f}" if memory else '',
               *estimate_columns(row, step_name, step), f"{step['compile_s']:.0f}",
               row.get('commit', '')]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rows', default=','.join(ROWS), help=f'of {", ".join(ROWS)}')
  parser.add_argument('--out', default=RESULTS)
  parser.add_argument('--redo', action='store_true', help='run rows already estimated')
  args = parser.parse_args()
  if not os.environ.get('TPU_LIBRARY_PATH'):
    sys.exit('set TPU_LIBRARY_PATH (make test installs libtpu in .venv/libtpu)')
  results = {}
  if os.path.exists(args.out):  # rows measured before are kept
    with open(args.out) as f:
      results = json.load(f)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  # The code each row was compiled from: rows run at different times stay told apart.
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                          capture_output=True, text=True).stdout.strip()
  for name in args.rows.split(','):
    if name in results and estimated(results[name]) and not args.redo:
      continue
    topology, chips, per_chip, remat, steps, flags = ROWS[name]
    with tempfile.TemporaryDirectory() as workdir:
      cmd = command(topology, chips, per_chip, remat, steps, flags, workdir)
      print(' '.join(cmd[1:]), flush=True)
      subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
      with open(os.path.join(workdir, f"compile_{topology.replace(':', '_')}.json")) as f:
        results[name] = {'chips': chips, 'per_chip': per_chip, 'command': cmd[1:],
                         'commit': commit, 'report': json.load(f)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)
    print(table({name: results[name]}), flush=True)
  print(table(results))


if __name__ == '__main__':
  main()
