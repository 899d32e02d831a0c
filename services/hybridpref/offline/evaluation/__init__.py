"""The evaluation harness: route labelled pools with every strategy and score the routed labels."""
