"""Point-cloud datasets (ModelNet, ScanObjectNN, synthetic shapes) and their transforms."""
