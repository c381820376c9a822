"""A site image cache: each image read from a backend once, then served
from local disk, every block checked, within a hard size cap.

The promises, and how they are kept:

* **Only verified bytes are committed.** A fill is written by a filler of
  its own (``locproxy.download.caching``), reading at the backend's speed;
  it is committed (fsync, atomic rename) only after the whole image matched
  its digest, with the fingerprint that read recorded. A mismatch, a full
  disk or a crash leaves no committed entry.
* **One backend read per image, across threads and workers.** Every client,
  the first included, follows the growing fill at its own pace; a slow or
  stalled client holds up no one. If the filler dies or stalls, its
  followers go on from the image's copies.
* **A hard cap.** Room is reserved under the cache's lock before a fill
  starts; least recently used entries no one reads are evicted first, and
  an image that cannot fit is served without being cached.
* **Never a corrupt block served.** Every block of every hit is checked
  against the entry's fingerprint before it is sent; a bad block removes
  the entry, and the download goes on from the image's copies.
  ``cache_verify_interval`` adds a background scrub of the whole entry
  against the image's digest.
* **The cache steps aside, never in the way**: see ``store.py``'s guard.

Every request is still authorised by the upstream first; the cache only
changes where the bytes come from.
"""

from locproxy.cache.files import is_site_cache
from locproxy.cache.fills import Fill, FillerGone, Follow, Hit
from locproxy.cache.store import SiteCache, cache_key

__all__ = ["Fill", "FillerGone", "Follow", "Hit", "SiteCache", "cache_key", "is_site_cache"]
