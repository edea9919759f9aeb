"""What the API's lifespan owns and hands to requests."""

from __future__ import annotations

from dataclasses import dataclass

from services.api.uploads.service import UploadService
from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore


@dataclass
class AppState:
    settings: Settings
    db: Database
    store: ObjectStore
    uploads: UploadService
