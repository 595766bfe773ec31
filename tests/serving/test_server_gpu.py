"""The CUDA path of the server: the same probabilities on the GPU as on the CPU (skipped without CUDA),
and a clear refusal when the settings ask for CUDA on a machine without it."""

from __future__ import annotations

from typing import Any

import pytest

from tenfold.serving.loading import ServingLoadError, load_served_model


def _requests() -> list[Any]:
    from tenfold.workloads.flights.request import FlightRequest

    return [FlightRequest(carrier=c, flight=10 + i, origin=o, dest="ATL", sched_dep=f"2013-01-0{1 + i}T0{6 + i}:30:00")
            for i, (c, o) in enumerate([("UA", "EWR"), ("AA", "JFK"), ("DL", "LGA")])]


def test_cuda_asked_for_without_cuda_is_refused_clearly(serving_settings: Any, served_versions: Any,
                                                        server_fields: Any) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ServingLoadError, match="no CUDA device"):
        load_served_model(server_fields(serving_settings, device="cuda"), served_versions.champion)


@pytest.mark.gpu
def test_the_gpu_gives_the_cpus_probabilities(serving_settings: Any, served_versions: Any, server_fields: Any) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = load_served_model(server_fields(serving_settings, device="cpu"), served_versions.champion)
    gpu = load_served_model(server_fields(serving_settings, device="cuda"), served_versions.champion)
    assert gpu.device.type == "cuda" and next(gpu.loaded.model.parameters()).is_cuda
    assert gpu.predict(_requests()) == pytest.approx(cpu.predict(_requests()), abs=1e-5)


def test_the_device_bridge_leaves_the_probabilities_alone(serving_settings: Any, served_versions: Any,
                                                          server_fields: Any) -> None:
    """What the GPU path wraps the network in, run on the CPU: the folder's predict_proba is unchanged."""
    import dataclasses

    import torch

    from tenfold.serving.loading import _on_device

    plain = load_served_model(server_fields(serving_settings, device="cpu"), served_versions.champion)
    bridged = dataclasses.replace(plain, loaded=dataclasses.replace(
        plain.loaded, model=_on_device(plain.loaded.model, torch.device("cpu"))))
    assert bridged.loaded.model is not plain.loaded.model
    assert bridged.predict(_requests()) == plain.predict(_requests())
