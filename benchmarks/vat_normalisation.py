"""I-VAT's two normalisations (`perturbations.vat.normalisation`): how far each moves z, and
what CCT scores with each (issue: the authors' `+1e-8` rule barely perturbs).

  .venv/bin/python benchmarks/vat_normalisation.py                   # norms at initialisation
  .venv/bin/python benchmarks/vat_normalisation.py --train --seeds=0,1,2   # + fashion5 runs

At initialisation: ||r_adv|| per sample of one auxiliary decoder with the authors'
initialisation, on z = ReLU(N(0, 1)) (batch 2), at VOC's size (z 41x41x512, 21 classes) and
the demo's (8x8 of the tiny PSP's channels, 5 classes), with each power-iteration method.
With --train: `configs/demo.py:fashion5` at 25 labels per seed and rule (the demo's 1200
steps), its test mIoU and the mean of the train log's `perturbation_norm_vat` over the run.
Runs resume from runs/vat_normalisation/<rule>/seed<s>. Prints a table; writes
benchmarks/results/vat_normalisation.json.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'vat_normalisation.json')
RULES = ('exact', 'authors')

_TRAIN = flags.DEFINE_bool('train', False, 'Also train fashion5 at 25 labels per seed and rule.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the training runs.')
_RUNS_DIR = flags.DEFINE_string('runs_dir', os.path.join(REPO, 'runs', 'vat_normalisation'),
                                'Folder of the training runs.')


def norms_at_init() -> list[dict]:
  """||r_adv|| per sample at initialisation, each size x method x rule."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cct_jax import perturbations  # pylint: disable=import-outside-toplevel
  from cct_jax.models.decoders import Decoder  # pylint: disable=import-outside-toplevel

  rows = []
  for size, (side, channels, classes) in {'voc': (41, 512, 21), 'demo': (8, 32, 5)}.items():
    decoder = Decoder(classes)
    z = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, side, side, channels)))
    params = decoder.init(jax.random.key(1), z[:1])['params']
    decode = lambda h, params=params, decoder=decoder: decoder.apply({'params': params}, h)
    for method in ('finite_difference', 'hvp'):
      for rule in RULES:
        z_tilde = jax.jit(lambda z, method=method, rule=rule: perturbations.vat(
            z, jax.random.key(2), None, decode, method=method, xi=1e-6, eps=2.0,
            iterations=1, normalisation=rule))(z)
        norms = np.sqrt(np.sum(np.square(np.asarray(z_tilde - z)), axis=(1, 2, 3)))
        rows.append(dict(size=size, method=method, normalisation=rule,
                         r_adv_norm=[float(n) for n in norms]))
  return rows


def train_command(rule: str, seed: int) -> list[str]:
  return [sys.executable, '-m', 'cct_jax.main', '--config=configs/demo.py:fashion5',
          f'--workdir={os.path.join(_RUNS_DIR.value, rule, f"seed{seed}")}',
          '--config.data.num_labelled=25', f'--config.seed={seed}',
          f'--config.data.split_seed={seed}', f'--config.data.shuffle_seed={seed}',
          f'--config.perturbations.vat.normalisation={rule}']


def train_run(rule: str, seed: int) -> dict:
  """The run's test mIoU and its mean `perturbation_norm_vat` (trained if not finished)."""
  command = train_command(rule, seed)
  workdir = command[4].removeprefix('--workdir=')
  results = os.path.join(workdir, 'results_test.json')
  if not os.path.exists(results):
    subprocess.run(command, cwd=REPO, check=True)
  with open(results) as f:
    miou = json.load(f)['miou']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    norms = [r['perturbation_norm_vat'] for r in map(json.loads, f)
             if 'perturbation_norm_vat' in r]
  return dict(normalisation=rule, seed=seed, test_miou=miou,
              mean_perturbation_norm_vat=sum(norms) / len(norms),
              command=' '.join(['python'] + command[1:]))


def main(argv):
  del argv
  kept = {}
  if os.path.exists(RESULTS):
    with open(RESULTS) as f:
      kept = json.load(f)
  results = {'at_init': norms_at_init(),
             'fashion5_n25': [] if _TRAIN.value else kept.get('fashion5_n25', [])}
  print('| size | method | normalisation | ||r_adv|| per sample (eps = 2) |\n|---|---|---|---|')
  for row in results['at_init']:
    print(f"| {row['size']} | {row['method']} | {row['normalisation']} | "
          f"{', '.join(f'{n:.3g}' for n in row['r_adv_norm'])} |")
  if _TRAIN.value:
    print('\n| normalisation | seed | test mIoU | mean ||r_adv|| over the run |\n|---|---|---|---|')
    for seed in map(int, _SEEDS.value):
      for rule in RULES:
        run = train_run(rule, seed)
        results['fashion5_n25'].append(run)
        print(f"| {rule} | {seed} | {100 * run['test_miou']:.1f} | "
              f"{run['mean_perturbation_norm_vat']:.3g} |", flush=True)
        with open(RESULTS, 'w') as f:
          json.dump(results, f, indent=1)
  with open(RESULTS, 'w') as f:
    json.dump(results, f, indent=1)
  print(f'written to {RESULTS}')


if __name__ == '__main__':
  app.run(main)
