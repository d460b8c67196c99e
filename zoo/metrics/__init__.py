"""Metrics (classification accuracy, confusion matrices, PSNR/SSIM, ...)."""
