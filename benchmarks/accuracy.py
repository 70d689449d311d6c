"""Accuracy benchmark: does CCT beat training on the labels alone, on real images?

  .venv/bin/python benchmarks/accuracy.py            # the default set (hours on a CPU)
  .venv/bin/python benchmarks/accuracy.py --quick    # tex5, one seed, smallest budget (< 10 min)
  .venv/bin/python benchmarks/accuracy.py --baselines  # + Table 4's baselines, loss ablation

The paper's central claim (Table 4, Fig. 5) on the two bundled datasets (README "Data"): texture
mosaics (tex5) and Fashion-MNIST scenes (fashion5; needs Debian's `dataset-fashion-mnist`).
Every run is `python -m cct_jax.main --config=configs/demo.py:<dataset>` with the overrides
of its arm, budget and seed, so each number can be reproduced by one command (the JSON
keeps them). Both arms share the network (the tiny ResNet + PSP of configs/demo.py), the
steps, batches and learning rate; only `train.mode` differs. The seed sets the labelled
draw, the initialisation and the data order; the model is selected on val and scored on
test, mIoU from one confusion matrix over the whole split.

Sets:
  main       supervised vs CCT, each dataset x each labelled budget x each seed
  ablation   at the smallest budget of `ABLATION_DATASET`: each perturbation type alone
             (Fig. 5) and CCT with ab-CE (Eq. 4)
  baselines  (--baselines) Mean Teacher and input VAT at the two smallest budgets (App. A,
             Table 4), and at the ablation's budget CCT with KL / JS distances, confidence
             masking, the pairwise loss and the other ramp shapes (App. B, K)
  weak       (--weak) at the smallest budget on fashion5, every seed: CCT from an encoder
             pre-trained on image-level labels, and that plus L_w on its CAM pseudo-labels
             made by the authors' two CRFs and by one CRF (sec. 3.3; each pseudo-label
             kind's mIoU and share of pixels labelled recorded); and CCT + L_w on the
             two-CRF pseudo-labels of IRN's CAM network (the authors' classifier)
  two domains  (--two_domains) tex5 and fashion5 at once, the smallest budget each, every
             seed: supervised, CCT and CCT with the adversarial branch (sec. 3.4, App. E);
             each domain's test mIoU and their average

Runs live in `--runs_dir` (default runs/accuracy), one folder each. A finished run is read
back, from its folder or, when that is gone (a fresh checkout), from the results JSON if it
records the run with the same commands (`--fresh` trains it again); an interrupted one
resumes from its checkpoint: stop and restart at will. Runs the JSON records but this
invocation does not plan (another set's) stay in it. Writes
benchmarks/results/accuracy[_quick].json and .md and docs/accuracy[_quick].png after every
run; `--report` writes them from the finished runs alone.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags

from cct_jax import defaults, perturbations, schedules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/demo.py'
RESULTS_DIR = os.path.join(REPO, 'benchmarks', 'results')
DOCS_DIR = os.path.join(REPO, 'docs')
DATASETS = ('tex5', 'fashion5')
BUDGETS = (25, 50, 100)
SEEDS = (0, 1, 2)
# tex5's two quick runs take half the time of both datasets' four.
QUICK_DATASET = 'tex5'
ABLATION_DATASET = 'fashion5'  # it has a background, so all seven perturbation types apply
SETTING = ('configs/demo.py: tiny ResNet (width 8, one block per stage, output stride 4) + PSP '
           '32 (fashion5: 32-channel decoder blocks), 1200 steps of 8 labelled + 8 unlabelled '
           '64x64 images, SGD lr 0.1 poly, w_u 10; 4000 unlabelled images; model selected on '
           'val (200), scored on test (500)')

_QUICK = flags.DEFINE_bool(
    'quick', False, f'One seed, the smallest budget, no ablation; {QUICK_DATASET} only unless '
    '--datasets says otherwise.')
_DATASETS = flags.DEFINE_list('datasets', None, f"Datasets (default: {','.join(DATASETS)}).")
_BUDGETS = flags.DEFINE_list('budgets', [str(b) for b in BUDGETS], 'Labelled image counts.')
_SEEDS = flags.DEFINE_list('seeds', [str(s) for s in SEEDS], 'Seeds of the main set.')
_ADD_BASELINES = flags.DEFINE_bool(
    'baselines', False, 'Add Mean Teacher and input VAT (Table 4) and the loss ablation.')
_ADD_WEAK = flags.DEFINE_bool(
    'weak', False, 'Add CCT from a classification-pretrained encoder, without and with '
    'weak-label pseudo-labels (sec. 3.3), on fashion5.')
_ADD_TWO_DOMAINS = flags.DEFINE_bool(
    'two_domains', False, 'Add both bundled domains at once: supervised, CCT, CCT with the '
    'adversarial branch (sec. 3.4, App. E).')
_REPORT = flags.DEFINE_bool(
    'report', False, 'Train nothing: the table and plot of the runs already finished.')
_FRESH = flags.DEFINE_bool(
    'fresh', False, 'Train every run whose folder is missing, even when the results JSON '
    'already records it.')
_ABLATION_SEEDS = flags.DEFINE_list('ablation_seeds', ['0'],
                                    "Seeds of the ablation set ('' for none).")
_RUNS_DIR = flags.DEFINE_string('runs_dir', os.path.join(REPO, 'runs', 'accuracy'),
                                'Folder of the runs, one folder each.')


def perturbation_types(dataset: str) -> list[str]:
  """The perturbation types the dataset's config trains (no masks for tex5)."""
  config = defaults.load_config_file(os.path.join(REPO, CONFIG), dataset)
  counts = perturbations.decoder_counts(config.perturbations)
  return [t for t, count in counts.items() if count > 0]


# Arm -> its overrides of configs/demo.py (which is CCT with the paper's losses).
VARIANTS = {
    'supervised': ['--config.train.mode=supervised'],
    'cct': [],
    # App. A, Table 4: consistency on the input instead of the encoder's output. The paper
    # gives no weight for them; CCT's w_u of 10 ruins both (tex5, 25 labels, seed 0: val
    # mIoU at step 300, supervised 52.5; Mean Teacher 44.3 at 10, 50.7 at 1; input VAT 42.3
    # and 49.5), so they take 1, VAT's own alpha (Miyato et al.).
    'mean_teacher': ['--config.train.mode=mean_teacher', '--config.loss.unsup_weight=1.0'],
    'input_vat': ['--config.train.mode=input_vat', '--config.loss.unsup_weight=1.0'],
    # Eq. 4 and App. B.1, B.2, K: CCT with one loss choice changed.
    'cct_ab_ce': ['--config.loss.supervised=ab_ce'],
    'cct_kl': ['--config.loss.unsupervised=kl'],
    'cct_js': ['--config.loss.unsupervised=js'],
    'cct_confidence_mask': ['--config.loss.confidence_masking=True'],
    'cct_pairwise': ['--config.loss.pairwise_weight=1.0'],
    **{f'cct_ramp_{kind}': [f'--config.loss.ramp={kind}'] for kind in schedules.RAMPS
       if kind != 'gaussian'},
}
LOSS_ABLATION = [arm for arm in VARIANTS if arm.startswith('cct_') and arm != 'cct_ab_ce']
# Weak image-level labels (sec. 3.3), on fashion5 where CCT finds the items but not their
# class: CCT from a classification-pretrained encoder, without and with L_w, the
# pseudo-labels by each rule of `weak.pseudo_label_rule` (the authors', the default, first).
WEAK_RULES = {'cct_weak': 'two_crfs', 'cct_weak_one_crf': 'one_crf', 'cct_weak_irn': 'two_crfs'}
WEAK_ARMS = (*WEAK_RULES, 'cct_cls_encoder')
# Arms whose pseudo-labels come from IRN's CAM network (weak.classifier='irn', the paper
# configs' default) with IRN's CAM scales and flips, in a classifier of their own; CCT
# then starts from scratch, as the authors' from ImageNet. The demo's from-scratch AdamW
# trains it, every stage: IRN's SGD recipe fine-tunes ImageNet weights, and stages frozen
# at a random initialisation would stay random.
IRN_ARMS = {'cct_weak_irn': ['--config.weak.classifier=irn',
                             '--config.weak.cam_scales=(1.0,0.5,1.5,2.0)',
                             '--config.weak.cam_flip=True']}
WEAK_DATASET = 'fashion5'
# Sec. 3.4 on the two bundled domains (disjoint label spaces, like Cityscapes + SUN RGB-D):
# configs/demo_two_domains.py, each domain's own BN statistics (see README).
TWO_DOMAINS = 'tex5+fashion5'
TWO_DOMAIN_CONFIG = 'configs/demo_two_domains.py'
TWO_DOMAIN_ARMS = {'supervised': ['--config.train.mode=supervised'], 'cct': [],
                   'cct_adversarial': ['--config.adversarial.enabled=True']}


def arm_overrides(arm: str) -> list[str]:
  """The config overrides that make an arm out of configs/demo.py; `only_<type>` keeps one
  perturbation type (Fig. 5)."""
  if arm in VARIANTS:
    return VARIANTS[arm]
  kept = arm.removeprefix('only_')
  if arm.startswith('only_') and kept in perturbations.PERTURBATIONS:
    return [f'--config.perturbations.{t}.count=0' for t in perturbations.PERTURBATIONS
            if t != kept]
  raise ValueError(f'unknown arm {arm!r}')


@dataclasses.dataclass(frozen=True)
class Run:
  dataset: str
  arm: str
  labelled: int
  seed: int

  @property
  def name(self) -> str:
    return f'{self.dataset}/{self.arm}/n{self.labelled}/seed{self.seed}'

  def commands(self, workdir: str) -> list[list[str]]:
    """The command lines of the run, in order; each resumes where it stopped."""
    folder = os.path.join(workdir, self.name)
    if self.dataset == TWO_DOMAINS:
      per_domain = [f'--config.domains.{d}.{field}={value}' for d in self.dataset.split('+')
                    for field, value in (('num_labelled', self.labelled),
                                         ('split_seed', self.seed), ('shuffle_seed', self.seed))]
      return [[sys.executable, '-m', 'cct_jax.main', f'--config={TWO_DOMAIN_CONFIG}',
               f'--workdir={folder}', f'--config.seed={self.seed}',
               '--config.domain_batch_stats=True', *per_domain,
               *TWO_DOMAIN_ARMS[self.arm]]]
    base = [sys.executable, '-m', 'cct_jax.main', f'--config={CONFIG}:{self.dataset}',
            f'--config.data.num_labelled={self.labelled}', f'--config.seed={self.seed}',
            f'--config.data.split_seed={self.seed}', f'--config.data.shuffle_seed={self.seed}']
    if self.arm not in WEAK_ARMS:
      return [base + [f'--workdir={folder}'] + arm_overrides(self.arm)]
    # Sec. 3.3: the encoder pre-trained for image-level classification on the labelled and
    # the weak set (the unlabelled pool with its image labels), then CCT from it; with
    # L_w, its CAM pseudo-labels (refined by the CRF) train the auxiliary decoders too.
    # The weak arms of a seed share one classifier and its CAMs, each rule writing its own
    # folder (the commands skip what is done).
    prep = weak_prep_folder(self, workdir)
    prepare = [f'--workdir={prep}', *IRN_ARMS.get(self.arm, [])]
    commands = [base + prepare + ['--mode=pretrain_cls']]
    train = base + [f'--workdir={folder}']
    if self.arm not in IRN_ARMS:
      train.append(f'--config.model.encoder_from={prep}/classifier')
    if self.arm in WEAK_RULES:
      rule = WEAK_RULES[self.arm]
      commands.append(base + prepare + ['--mode=pseudo_labels',
                                        f'--config.weak.pseudo_label_rule={rule}'])
      train.append(f'--config.data.pseudo_labels={prep}/pseudo_labels/{rule}')
    return commands + [train]


def weak_prep_folder(run: Run, workdir: str) -> str:
  """The classifier and pseudo-labels of a weak-label run's labels and seed (and network)."""
  folder = os.path.join(workdir, run.dataset, 'weak_prep', f'n{run.labelled}', f'seed{run.seed}')
  return os.path.join(folder, 'irn') if run.arm in IRN_ARMS else folder


def plan(datasets, budgets, seeds, ablation_seeds, baselines: bool = False,
         weak: bool = False, two_domains: bool = False) -> list[Run]:
  """The runs of the benchmark, the most telling first so that an interrupted benchmark
  has already answered something: the smallest budget (the paper's claim), one seed of
  each larger budget (the curve), the ablation, the other seeds; then, with `baselines`,
  Mean Teacher, input VAT and the loss ablation at the smallest budget, then Mean Teacher
  and input VAT at the second smallest; with `weak`, the weak-label arms at the smallest
  budget; with `two_domains`, both bundled domains at once at the smallest budget (each
  domain that many labels)."""
  smallest = min(budgets)
  runs = [Run(d, arm, n, s) for n in budgets for s in seeds for d in datasets
          for arm in ('supervised', 'cct')]
  ablation = ABLATION_DATASET in datasets and ablation_seeds
  if ablation:
    arms = [f'only_{t}' for t in perturbation_types(ABLATION_DATASET)] + ['cct_ab_ce']
    runs += [Run(ABLATION_DATASET, arm, smallest, s) for s in ablation_seeds for arm in arms]
  if baselines:
    runs += [Run(d, arm, n, s) for n in sorted(budgets)[:2] for s in seeds for d in datasets
             for arm in ('mean_teacher', 'input_vat')]
    if ablation:
      runs += [Run(ABLATION_DATASET, arm, smallest, s) for s in ablation_seeds
               for arm in LOSS_ABLATION]
  if weak and WEAK_DATASET in datasets:
    # Both rules seed by seed (paired on one classifier), then the encoder-only control.
    runs += [Run(WEAK_DATASET, arm, smallest, s) for s in seeds for arm in WEAK_RULES]
    runs += [Run(WEAK_DATASET, 'cct_cls_encoder', smallest, s) for s in seeds]
  if two_domains:
    runs += [Run(TWO_DOMAINS, arm, smallest, s) for s in seeds for arm in TWO_DOMAIN_ARMS]

  def priority(run: Run) -> int:
    if run.dataset == TWO_DOMAINS:
      return 7
    if run.arm in WEAK_ARMS:
      return 6
    if run.arm in ('mean_teacher', 'input_vat') or run.arm in LOSS_ABLATION:
      return 4 if run.labelled == smallest else 5
    if run.arm not in ('supervised', 'cct'):
      return 2
    if run.labelled == smallest or run.seed == seeds[0]:
      return 0 if run.labelled == smallest else 1
    return 3

  return sorted(runs, key=priority)  # stable: budget, seed, dataset order within a level


def results_path(run: Run, workdir: str) -> str:
  """What a finished run leaves: the test scores (results.json: every domain's and their
  average)."""
  name = 'results.json' if run.dataset == TWO_DOMAINS else 'results_test.json'
  return os.path.join(workdir, run.name, name)


def records_of(run: Run, scores: dict, commands: list[str]) -> list[dict]:
  """One record per scored dataset: a two-domain run gives each domain's and the average
  (as datasets 'tex5+fashion5:tex5', ...:fashion5 and ...:average)."""
  base = dict(dataclasses.asdict(run), commands=commands)
  if run.dataset == TWO_DOMAINS:
    by_domain = {name: s['miou'] for name, s in scores['domains'].items()}
    by_domain['average'] = scores['miou']
    return [dict(base, dataset=f'{run.dataset}:{name}', miou=miou)
            for name, miou in by_domain.items()]
  return [dict(base, miou=scores['miou'], per_class_iou=scores['per_class_iou'],
               **{k: v for k, v in scores.items() if k == 'pseudo_labels'})]


def command_lines(run: Run, workdir: str) -> list[str]:
  """The run's commands as the JSON records them (workdir relative to the repository)."""
  return [' '.join(['python'] + c[1:]) for c in run.commands(os.path.relpath(workdir, REPO))]


def recorded_scores(run: Run, records: list[dict], commands: list[str]) -> dict | None:
  """The scores an earlier invocation recorded for `run` with the same commands (so the
  same config), as `execute` returns them; None when it has none. The JSON outlives the
  run folders (runs/ is not kept), so a fresh checkout does not train them again."""
  mine = [r for r in records if r['commands'] == commands and r['dataset'].split(':')[0] ==
          run.dataset and (r['arm'], r['labelled'], r['seed']) == (run.arm, run.labelled,
                                                                   run.seed)]
  if not mine:
    return None
  if run.dataset == TWO_DOMAINS:
    by_domain = {r['dataset'].split(':')[1]: r['miou'] for r in mine}
    return dict(miou=by_domain.pop('average'),
                domains={name: dict(miou=miou) for name, miou in by_domain.items()})
  return {k: v for k, v in mine[0].items()
          if k in ('miou', 'per_class_iou', 'pseudo_labels')}


def records_outside(runs: list[Run], records: list[dict]) -> list[dict]:
  """The records of runs that `runs` does not plan: an invocation over a subset (say
  --two_domains without --weak) keeps, rather than drops, what others measured."""
  planned = {(run.dataset, run.arm, run.labelled, run.seed) for run in runs}
  return [r for r in records
          if (r['dataset'].split(':')[0], r['arm'], r['labelled'], r['seed']) not in planned]


def load_records(path: str) -> list[dict]:
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return json.load(f)['runs']


def execute(run: Run, workdir: str) -> dict:
  """The run's test scores (and, with pseudo-labels, their scores): read back when
  finished, else trained (resuming if begun)."""
  folder = os.path.join(workdir, run.name)
  results_file = results_path(run, workdir)
  if not os.path.isfile(results_file):
    os.makedirs(folder, exist_ok=True)
    log_file = os.path.join(folder, 'log.txt')
    for command in run.commands(workdir):
      with open(log_file, 'a') as log:
        status = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                check=False)
      if status.returncode != 0:
        with open(log_file) as log:
          tail = ''.join(log.readlines()[-25:])
        raise RuntimeError(f'{run.name} failed (exit {status.returncode}); the end of '
                           f'{log_file}:\n{tail}')
  with open(results_file) as f:
    scores = json.load(f)
  pseudo_scores = os.path.join(weak_prep_folder(run, workdir), 'pseudo_labels', 'scores.json')
  if run.arm in WEAK_RULES and os.path.isfile(pseudo_scores):
    with open(pseudo_scores) as f:
      scores['pseudo_labels'] = pseudo_label_record(json.load(f), WEAK_RULES[run.arm])
  return scores


def pseudo_label_record(scores: dict, rule: str) -> dict:
  """From a scores.json of --mode=pseudo_labels, what the arm of `rule` trained on and the
  thresholded CAMs it came from: mIoU over the pixels labelled, with the unlabelled ones
  as wrong, and the share labelled."""
  keys = ('miou', 'miou_unsure_as_wrong', 'labelled_fraction')
  return {f'{name}_{key}': scores[kind][key] for name, kind in (('cam', 'cam'), ('refined', rule))
          for key in keys}


def _mean_std(values: list[float]) -> tuple[float, float]:
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _row_order(dataset: str, arm: str, labelled: int) -> tuple:
  """Rows by dataset and budget; the baseline, then CCT, then the variants by name."""
  main_arms = ('supervised', 'cct')
  return dataset, labelled, main_arms.index(arm) if arm in main_arms else 2, arm


def summarise(records: list[dict]) -> list[dict]:
  """One row per (dataset, arm, budget): test mIoU mean and sample std over seeds (in
  points); CCT rows also carry the paired gain over supervised (same labels, same seed)."""
  groups: dict[tuple, dict[int, float]] = {}
  for r in records:
    groups.setdefault((r['dataset'], r['arm'], r['labelled']), {})[r['seed']] = 100 * r['miou']
  rows = []
  for (dataset, arm, labelled), by_seed in sorted(groups.items(),
                                                 key=lambda item: _row_order(*item[0])):
    mean, std = _mean_std(list(by_seed.values()))
    row = dict(dataset=dataset, arm=arm, labelled=labelled, seeds=sorted(by_seed),
               miou=mean, std=std, per_seed=[by_seed[s] for s in sorted(by_seed)])
    pseudo = [r['pseudo_labels'] for r in records if 'pseudo_labels' in r and
              (r['dataset'], r['arm'], r['labelled']) == (dataset, arm, labelled)]
    if pseudo:  # pseudo-label scores (points, %), over the seeds
      row['pseudo_labels'] = {kind: statistics.fmean(100 * p[kind] for p in pseudo)
                              for kind in pseudo[0]}
    baseline = groups.get((dataset, 'supervised', labelled), {})
    paired = [by_seed[s] - baseline[s] for s in sorted(by_seed) if s in baseline]
    if arm != 'supervised' and paired:
      row['gain'], row['gain_std'] = _mean_std(paired)
    rows.append(row)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ['| dataset | labelled | method | test mIoU (mean +- std) | gain over supervised '
           '(paired) | per seed |', '|---|---|---|---|---|---|']
  for r in rows:
    spread = lambda std: f' +- {std:.1f}' if len(r['seeds']) > 1 else ' (one seed)'
    gain = f"{r['gain']:+.1f}{spread(r['gain_std'])}" if 'gain' in r else ''
    seeds = ' / '.join(f'{v:.1f}' for v in r['per_seed'])
    lines.append(f"| {r['dataset']} | {r['labelled']} | {r['arm']} | "
                 f"{r['miou']:.1f}{spread(r['std'])} | {gain} | {seeds} |")
  pseudo = [r for r in rows if 'pseudo_labels' in r]
  if pseudo:
    lines += ['', 'Pseudo-labels against the true masks: mIoU over the pixels labelled / with '
              'the others as wrong, and % of pixels labelled.', '',
              '| dataset | labelled | method | CAM thresholds | % labelled | refined | '
              '% labelled |', '|---|---|---|---|---|---|---|']
    for r in pseudo:
      p = r['pseudo_labels']
      cells = [f"{p[f'{kind}_miou']:.1f} / {p[f'{kind}_miou_unsure_as_wrong']:.1f} | "
               f"{p[f'{kind}_labelled_fraction']:.1f}" for kind in ('cam', 'refined')]
      lines.append(f"| {r['dataset']} | {r['labelled']} | {r['arm']} | "
                   f"{' | '.join(cells)} |")
  return '\n'.join(lines + table4(rows))


TABLE4_ARMS = ('supervised', 'mean_teacher', 'input_vat', 'cct')


def table4(rows: list[dict]) -> list[str]:
  """The paper's Table 4 arranged from `rows`: a line per method, a column per dataset and
  budget where Mean Teacher or input VAT ran (mean +- std over seeds, with the seed count
  where fewer ran than elsewhere); no lines when neither did."""
  cells = {(r['arm'], r['dataset'], r['labelled']): r for r in rows if r['arm'] in TABLE4_ARMS}
  columns = sorted({(d, n) for arm, d, n in cells if arm in TABLE4_ARMS[1:3]})
  if not columns:
    return []
  most_seeds = max(len(r['seeds']) for r in cells.values())

  def cell(key):
    if key not in cells:
      return ''
    r = cells[key]
    if len(r['seeds']) == 1:
      return f"{r['miou']:.1f} (one seed)"
    seeds = '' if len(r['seeds']) == most_seeds else f" ({len(r['seeds'])} seeds)"
    return f"{r['miou']:.1f} +- {r['std']:.1f}{seeds}"

  lines = ['', '| method | ' + ' | '.join(f'{d} {n}' for d, n in columns) + ' |',
           '|---' * (len(columns) + 1) + '|']
  return lines + [f'| {arm} | ' + ' | '.join(cell((arm, d, n)) for d, n in columns) + ' |'
                  for arm in TABLE4_ARMS]


def plot(rows: list[dict], path: str) -> None:
  """mIoU against the labelled count, one panel per dataset run at several budgets, one
  line per method that was (error bars: the seed std)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  budgets = {}
  for r in rows:
    budgets.setdefault(r['dataset'], set()).add(r['labelled'])
  datasets = sorted(d for d, sizes in budgets.items() if len(sizes) > 1) or sorted(budgets)
  fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.5), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    arms = sorted({r['arm'] for r in rows if r['dataset'] == dataset})
    for arm in arms:
      points = sorted((r['labelled'], r['miou'], r['std']) for r in rows
                      if r['dataset'] == dataset and r['arm'] == arm)
      if len(points) > 1 or len(arms) <= 2:
        x, y, err = zip(*points)
        ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=arm)
    ax.set(title=dataset, xlabel='labelled images', ylabel='test mIoU (%)',
           xticks=sorted(budgets[dataset]))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a partial benchmark may have no line here yet
      ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def results_stem(quick: bool) -> str:
  return os.path.join(RESULTS_DIR, 'accuracy_quick' if quick else 'accuracy')


def write_outputs(records: list[dict], rows: list[dict], quick: bool, meta: dict,
                  verbose: bool) -> None:
  os.makedirs(RESULTS_DIR, exist_ok=True)
  stem = results_stem(quick)
  table = markdown(rows)
  with open(stem + '.json', 'w') as f:
    json.dump(dict(meta, rows=rows, runs=records), f, indent=1)
  with open(stem + '.md', 'w') as f:
    f.write(table + '\n')
  plot(rows, os.path.join(DOCS_DIR, os.path.basename(stem) + '.png'))
  if verbose:
    print(table)


def check_datasets(datasets) -> None:
  if 'fashion5' in datasets:
    from cct_jax.data import fashion5  # pylint: disable=import-outside-toplevel
    if not os.path.isdir(fashion5.DEFAULT_IDX_DIR):
      sys.exit(f'fashion5 needs Fashion-MNIST in {fashion5.DEFAULT_IDX_DIR}: install it with '
               '`sudo apt-get install dataset-fashion-mnist`, or run with --datasets=tex5.')


def main(argv: Sequence[str] | None = None) -> None:
  """`argv` as app.run passes it, the flags parsed; None (a call from Python): the flags
  are parsed from sys.argv here."""
  if argv is None:
    flags.FLAGS(sys.argv)
  quick, workdir, fresh = _QUICK.value, _RUNS_DIR.value, _FRESH.value
  datasets = DATASETS if _DATASETS.value is None else [d for d in _DATASETS.value if d]
  if quick and _DATASETS.value is None:
    datasets = [QUICK_DATASET]
  budgets = [int(b) for b in _BUDGETS.value]
  seeds = [int(s) for s in _SEEDS.value]
  ablation_seeds = [int(s) for s in _ABLATION_SEEDS.value if s]
  baselines, weak, two_domains = _ADD_BASELINES.value, _ADD_WEAK.value, _ADD_TWO_DOMAINS.value
  if quick:
    budgets, seeds, ablation_seeds = [min(budgets)], seeds[:1], []
    baselines = weak = two_domains = False
  check_datasets(set(datasets) | ({'fashion5'} if two_domains else set()))

  runs = plan(datasets, budgets, seeds, ablation_seeds, baselines=baselines, weak=weak,
              two_domains=two_domains)
  planned = len(runs)
  earlier = load_records(results_stem(quick) + '.json')
  recorded = [] if fresh else earlier
  done = lambda run: (os.path.isfile(results_path(run, workdir)) or
                      recorded_scores(run, recorded, command_lines(run, workdir)))
  if _REPORT.value:
    runs = [run for run in runs if done(run)]
  records, started, trained = [], time.time(), 0
  for index, run in enumerate(runs, 1):
    began = time.time()
    commands = command_lines(run, workdir)
    scores = None if fresh else recorded_scores(run, recorded, commands)
    was_done = scores is not None or os.path.isfile(results_path(run, workdir))
    scores = scores or execute(run, workdir)
    records += records_of(run, scores, commands)
    trained += not was_done
    eta = ''
    if trained:
      remaining = len(runs) - index
      eta = f', about {remaining * (time.time() - started) / trained / 60:.0f} min left'
    print(f'[{index}/{len(runs)}] {run.name}: test mIoU {100 * scores["miou"]:.1f} '
          f'({"done before" if was_done else f"{time.time() - began:.0f} s"}{eta})',
          flush=True)
    # After every run, so that an interrupted benchmark leaves what it has measured, and
    # what earlier invocations measured outside the runs it has reached.
    kept = records_outside(runs[:index], earlier)
    meta = dict(
        command=' '.join(['benchmarks/accuracy.py'] + sys.argv[1:]),
        runs_reported=f'{index} of {planned} planned, {len(kept)} kept from earlier invocations',
        config=CONFIG, setting=SETTING,
        minutes_this_invocation=(time.time() - started) / 60)
    write_outputs(kept + records, summarise(kept + records), quick, meta,
                  verbose=index == len(runs))

if __name__ == '__main__':
  app.run(main)
