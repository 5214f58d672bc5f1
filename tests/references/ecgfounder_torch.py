"""ECGFounder's Net1D in PyTorch, written from docs/reference/ecgfounder.md for tests only.

Independent of crema_jax: key names, padding and pooling as the released checkpoints use them
(batch-norm modules are built but unused, as in the released model).
"""
import math

import torch
from torch import nn
import torch.nn.functional as F


class ConvPadSame(nn.Module):
    """Conv1d with 'same' padding: total p = max(0, (ceil(L/s)-1)*s + k - L), left p//2."""

    def __init__(self, cin, cout, k, s, groups=1):
        super().__init__()
        self.k, self.s = k, s
        self.conv = nn.Conv1d(cin, cout, k, stride=s, groups=groups)

    def forward(self, x):
        length = x.shape[-1]
        out_len = math.ceil(length / self.s)
        p = max(0, (out_len - 1) * self.s + self.k - length)
        return self.conv(F.pad(x, (p // 2, p - p // 2)))


class Block(nn.Module):
    def __init__(self, cin, cout, k, s, group_width, is_first_block):
        super().__init__()
        self.cin, self.cout, self.s, self.is_first_block = cin, cout, s, is_first_block
        self.bn1 = nn.BatchNorm1d(cin)
        self.conv1 = ConvPadSame(cin, cout, 1, 1)
        self.bn2 = nn.BatchNorm1d(cout)
        self.conv2 = ConvPadSame(cout, cout, k, s, groups=cout // group_width)
        self.bn3 = nn.BatchNorm1d(cout)
        self.conv3 = ConvPadSame(cout, cout, 1, 1)
        self.se_fc1 = nn.Linear(cout, cout // 2)
        self.se_fc2 = nn.Linear(cout // 2, cout)

    def forward(self, x):
        identity = x
        out = x if self.is_first_block else F.silu(x)
        out = F.silu(self.conv1(out))
        out = F.silu(self.conv2(out))
        out = self.conv3(out)
        se = out.mean(-1)
        se = torch.sigmoid(self.se_fc2(F.silu(self.se_fc1(se))))
        out = out * se.unsqueeze(-1)
        if self.s > 1:
            identity = F.max_pool1d(F.pad(identity, (0, 1), value=0.0), kernel_size=2, stride=2)
        if self.cout != self.cin:
            extra = self.cout - self.cin
            identity = F.pad(identity.transpose(-1, -2), (extra // 2, extra - extra // 2))
            identity = identity.transpose(-1, -2)
        return out + identity


class Stage(nn.Module):
    def __init__(self, cin, cout, n, k, s, group_width, is_first_stage):
        super().__init__()
        self.block_list = nn.ModuleList(
            Block(cin if j == 0 else cout, cout, k, s if j == 0 else 1, group_width,
                  is_first_stage and j == 0) for j in range(n))

    def forward(self, x):
        for block in self.block_list:
            x = block(x)
        return x


class Net1DRef(nn.Module):
    def __init__(self, in_channels=12, filters=(64, 160, 160, 400, 400, 1024, 1024),
                 blocks=(2, 2, 2, 3, 3, 4, 4), k=16, s=2, group_width=16, n_classes=150):
        super().__init__()
        self.first_conv = ConvPadSame(in_channels, filters[0], k, s)
        self.first_bn = nn.BatchNorm1d(filters[0])
        widths = [filters[0]] + list(filters)
        self.stage_list = nn.ModuleList(
            Stage(widths[i], widths[i + 1], blocks[i], k, s, group_width, i == 0)
            for i in range(len(filters)))
        self.dense = nn.Linear(filters[-1], n_classes)

    def features(self, x):
        out = F.silu(self.first_conv(x))
        for stage in self.stage_list:
            out = stage(out)
        return out.mean(-1)

    def forward(self, x):
        return self.dense(self.features(x))
