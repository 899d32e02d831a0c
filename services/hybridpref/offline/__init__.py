"""Offline work, never imported by a running service: pools and statistics, bundle building, correction and
PPM fitting, judge training and the evaluation harness."""
