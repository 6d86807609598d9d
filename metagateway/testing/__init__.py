"""
Fakes for testing metagateway, and programs that embed it, without a
network or the global reactor (as ``treq.testing`` is for treq).

- :class:`GatewayHarness`: a whole gateway in memory, reached through a
  :class:`StubTreq`, proxying to a :class:`RecordingUpstream`.
- :class:`ChannelHarness`: the gateway's HTTP/1.1 channel over a
  ``StringTransport``, proxying through a :class:`FakeAgent` whose calls
  (:class:`UpstreamCall`) the test answers with :class:`FakeResponse`.
- :class:`FakeGitHub`: GitHub's OAuth token and user endpoints.
- :class:`FakeS3`: an S3 bucket that checks each request's SigV4
  signature, with scripted faults.
- :class:`FakeThreadPool` and :class:`ImmediateReactor`: thread work run
  when the test says.
- :class:`EnvironmentMixin`: ``os.environ`` and ``sys.stderr`` swapped for
  one test.
- ``MemoryCredentialStore`` (from :mod:`metagateway.credentials.memory`):
  the in-memory credential store.

The gateway's own modules never import this package.
"""

from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.testing.channel import (
    CLIENT,
    SERVER,
    ChannelHarness,
    FakeAgent,
    FakeResponse,
    ParsedResponse,
    RecordingConsumer,
    UpstreamCall,
    chunk,
    parse_responses,
    post_head,
)
from metagateway.testing.environment import EnvironmentMixin
from metagateway.testing.gateway import (
    PASSWORD,
    SECRET,
    USERNAME,
    GatewayHarness,
    RecordingUpstream,
    ScriptedResource,
    StubTreq,
    make_config,
)
from metagateway.testing.github import (
    ACCESS_TOKEN,
    API_URL,
    CLIENT_ID,
    CLIENT_SECRET,
    OCTOCAT,
    TOKEN_URL,
    FakeEndpoint,
    FakeGitHub,
    TokenEndpoint,
    UserEndpoint,
)
from metagateway.testing.s3 import HANG, SETTINGS, FakeS3, RefusingClient
from metagateway.testing.threads import FakeThreadPool, ImmediateReactor

__all__ = [
    "ACCESS_TOKEN",
    "API_URL",
    "CLIENT",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "HANG",
    "OCTOCAT",
    "PASSWORD",
    "SECRET",
    "SERVER",
    "SETTINGS",
    "TOKEN_URL",
    "USERNAME",
    "ChannelHarness",
    "EnvironmentMixin",
    "FakeAgent",
    "FakeEndpoint",
    "FakeGitHub",
    "FakeResponse",
    "FakeS3",
    "FakeThreadPool",
    "GatewayHarness",
    "ImmediateReactor",
    "MemoryCredentialStore",
    "ParsedResponse",
    "RecordingConsumer",
    "RecordingUpstream",
    "RefusingClient",
    "ScriptedResource",
    "StubTreq",
    "TokenEndpoint",
    "UpstreamCall",
    "UserEndpoint",
    "chunk",
    "make_config",
    "parse_responses",
    "post_head",
]
