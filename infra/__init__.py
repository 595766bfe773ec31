"""Tenfold's CDK Terrain app (see main.py). Import as ``infra.*`` from the repository root."""
