"""How close a restore is to the clean image: PSNR and SSIM (`fidelity.py`, BasicSR's convention) and LPIPS-VGG
(`lpips.py`, v0.1). Here, below both, because the web page's Degrade → Restore tab and `training evaluate` report
the same numbers; the training loss builds on the same VGG (training/perceptual.py)."""
