"""Tools for developing and trying the service, outside the package: a real FHIR server on loopback
(fhir_server.py), which the tests, the benches, `make sandbox` and the lab's Medplum image all run."""
