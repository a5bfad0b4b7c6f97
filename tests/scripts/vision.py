"""An image-classification training loop in the style of torchvision's reference
scripts (no torchvision: the model and the data are defined here). It trains on CUDA
when there is one, else on the CPU; the test runs it unchanged on both sides.

    python vision.py --epochs 2
"""

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--lr", type=float, default=0.05)
args = p.parse_args()


class Shapes(Dataset):
    """Synthetic 3x16x16 images: class k has a bright patch in quadrant k, plus noise."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        self.images = torch.randn(n, 3, 16, 16, generator=g) * 0.5
        for i, k in enumerate(self.labels.tolist()):
            r, c = divmod(k, 2)
            self.images[i, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] += 1.0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    train = Shapes(128, seed=1)
    val = Shapes(64, seed=2)
    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(3),
    )
    val_loader = DataLoader(val, batch_size=32, num_workers=args.workers, pin_memory=True)
    model = TinyResNet().to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    losses, accuracy = [], []
    for _ in range(args.epochs):
        model.train()
        for images, target in loader:
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            loss = criterion(model(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, target in val_loader:
                images, target = images.to(device), target.to(device)
                pred = model(images).argmax(dim=1)
                correct += (pred == target).sum().item()
                total += target.numel()
        accuracy.append(correct / total)
    stats = {"running_mean": model.stem[1].running_mean.cpu().tolist()}
    print(
        "RESULT "
        + json.dumps({"device": str(device), "losses": losses, "accuracy": accuracy, **stats})
    )


if __name__ == "__main__":
    main()
