"""LyCORIS base shared by LoHa and LoKr (PEFT's lycoris_utils): not a method itself, no registry entry.

    y = base(x) + ΔW x,   ΔW = (alpha / r) * <the method's product of factors>   (LoHa: Hadamard; LoKr: Kronecker)

    config.py   LycorisConfig: r, alpha, rank/module dropout, use_effective_conv2d, targeting, patterns
    layer.py    LycorisLayer: bookkeeping, forward with module dropout and rank dropout, merge / unmerge
    conv.py     kernel geometry (groups, CP decomposition) and the delta's F.conv1d / F.conv2d
    targets.py  the handler table (Linear, Conv1d, Conv2d) and PEFT's default target modules
"""
