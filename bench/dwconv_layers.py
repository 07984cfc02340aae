"""The depthwise layers the kernel benchmarks and bench/inspect_kernels.py take: ``(C, H_in, stride)`` of OFA-MBV3
w1.0's depthwise convolutions at 224 px (each expand ratio's channel count where the block has one)."""

LAYERS = [
    (16, 112, 1),  # first block (fixed, e = 1)
    (96, 112, 2),  # stage 1 entry, e = 6
    (72, 56, 2),  # stage 2 entry, e = 3
    (144, 56, 1),  # stage 1, e = 6
    (144, 56, 2),  # stage 2 entry, e = 6
    (240, 28, 1),  # stage 2, e = 6
    (240, 28, 2),  # stage 3 entry, e = 6
    (480, 14, 1),  # stage 3/4, e = 6
    (672, 14, 1),  # stage 4, e = 6
    (672, 14, 2),  # stage 5 entry, e = 6
    (960, 7, 1),  # stage 5, e = 6
]
