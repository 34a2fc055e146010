"""Multi-task grade / IDH / 1p19q / MGMT heads on the segmentation encoder."""
