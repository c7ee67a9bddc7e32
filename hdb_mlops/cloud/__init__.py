"""Chapters 4 and 5C-5F: the AWS path.

One backend switch (``local | moto | aws``) used by every cloud call, the Stage 2
infrastructure (deploy, destroy and a live audit of the account), the SageMaker 3.x build
pipeline, and the promotion of one artifact between environments.
"""
