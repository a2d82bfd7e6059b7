"""The record read clinically, as facts for the rules: lab results in canonical units, code systems,
the products and drug groups of rules/, the order being checked against the dose history;
case.py puts them together as what the rules are asked about, the one entry point service.py calls."""
