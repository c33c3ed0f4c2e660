"""A plain-PyTorch training script of your own, measured under the protocol (nondet.api).

    python examples/own_loop/train.py -m source=none,init,shuffle,dropout,bitflip replicates=4
    python -m analysis outputs/default

Its own model, its own loop (no DataLoader: the data are tensors, batches are index slices), its
own settings under ``user:`` in conf/train.yaml; nondet gives it the data of ``dataset=...``, a
generator per source, the model's seeded construction, checkpoints and the run directory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nondet import api


class Net(nn.Module):
    def __init__(self, inputs: int, classes: int, hidden: int, dropout: float):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.out(self.dropout(torch.relu(self.hidden(x.flatten(1)))))


def train(cfg) -> dict:
    with api.Run(cfg) as run:
        data = run.data  # nondet's dataset=... (MNIST-1D by default), whole on the device
        model = run.build(Net, math.prod(data.input_shape), data.num_classes, cfg.user.hidden, cfg.user.dropout)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
        run.track(model, optimizer, schedule=schedule)  # resumed with every generator
        shuffle = run.generator("shuffle")
        for epoch in run.epochs():
            model.train()
            order = torch.randperm(len(data.y_train), generator=shuffle, device=shuffle.device)
            total = torch.zeros((), device=data.y_train.device)
            for index in order.split(cfg.batch_size):
                x, y = data.normalize(data.x_train[index]), data.y_train[index]
                optimizer.zero_grad()
                with run.dropout():  # nn.Dropout draws from the dropout source
                    with run.autocast():  # precision=bf16: the forward pass under autocast
                        loss = F.cross_entropy(model(x).float(), y)
                    loss.backward()
                optimizer.step()
                total += loss.detach() * len(index)
            schedule.step()
            model.eval()
            with torch.no_grad(), run.autocast():
                logits = model(data.normalize(data.x_test))
            run.record(logits, train_loss=float(total) / len(data.y_train))
    return run.outcome


@api.main(config_path="conf", config_name="train")
def main(cfg):
    return train(cfg)


if __name__ == "__main__":
    main()
