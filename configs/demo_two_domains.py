"""CCT on both bundled real datasets at once (paper sec. 3.4): tex5 texture mosaics and
fashion5 item scenes, disjoint label spaces (5 textures; background + 4 item groups), the
analogue of the paper's Cityscapes + SUN RGB-D (Table 3).

  python -m cct_jax.main --config=configs/demo_two_domains.py --workdir=runs/two_domains
  python -m cct_jax.main --config=configs/demo_two_domains.py --workdir=runs/two_domains \
      --mode=eval                                          # every domain, and the average
  python -m cct_jax.main --config=configs/demo_two_domains.py --workdir=runs/two_domains \
      --mode=predict --domain=fashion5 --input=DIR --output=DIR

Variants: `--config.train.mode=supervised` (the baseline: labelled batches only, still
alternating), `--config.adversarial.enabled=True` (App. E's discriminator, lambda_adv 2e-2),
`--config.domains.tex5.num_labelled=25 --config.domains.fashion5.num_labelled=25`.

Every setting is configs/demo.py's (read from it): the tiny ResNet at output stride 4,
lr 0.1, w_u 10, 100 labelled scenes per domain, batch 8 + 8, fashion5's 32-channel
decoder blocks. The iterations double, 2400
in all, so each domain trains as many as the single-domain demo. The perturbation roster
is shared by the domains: tex5's, without the object masks (the mosaics have no
background). fashion5 needs Debian's `dataset-fashion-mnist` (or
`--config.domains.fashion5.generated.idx_dir`).

Expected (benchmarks/accuracy.py --two_domains: 25 labels per domain, domain_batch_stats,
3 seeds): average test mIoU 42.8 supervised, 47.0 CCT (+4.2), 48.4 CCT with the
adversarial branch (+5.6). The paper's Table 3 (Cityscapes + SUN, 1.5k labels): CCT 52.1
average mIoU against 46.2 for the baseline.
The argument `smoke` shrinks it to four iterations (two per domain) that check train +
eval + predict (the test suite runs it).
"""

import os

from cct_jax import defaults

DOMAINS = ('tex5', 'fashion5')
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')


def get_config(arg: str = ''):
  smoke = defaults.parse_arg(arg, 'configs/demo_two_domains.py').smoke
  singles = {name: defaults.load_config_file(DEMO, ','.join(filter(None, (name, arg))))
             for name in DOMAINS}
  config = singles['tex5']
  # One model config for both domains: fashion5's decoders need configs/demo.py's wider blocks.
  config.model.decoder_width = singles['fashion5'].model.decoder_width
  if not smoke:  # Smoke: two iterations per domain, evaluated and saved after 2 and 4.
    config.train.update(num_steps=2 * config.train.num_steps,
                        eval_every=2 * config.train.eval_every,
                        checkpoint_every=2 * config.train.checkpoint_every)
  return defaults.multi_domain(config, {name: c.data for name, c in singles.items()})
