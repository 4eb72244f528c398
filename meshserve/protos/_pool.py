"""Descriptor pool of meshserve's generated protobuf modules."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
