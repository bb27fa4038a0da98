"""The network: the U-Net, its checkpoint loader, and the engines (torch, OpenVINO) that run it on tiles."""
