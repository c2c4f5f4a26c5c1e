"""Merchants, their sub-accounts and dashboard users, and the indexes that find a merchant by its credentials."""

import itertools

from engine.changes import Changes
from engine.payments import ACCOUNT_FLAGS
from engine.records import (
    SYSTEM_MARK,
    AddDashboardUser,
    CreateMerchant,
    CreateSubAccount,
    Merchant,
    Outcome,
    UpdateMerchant,
)

# Stores per merchant: each merchant record (read at every authentication refresh) carries them all.
MAX_SUB_ACCOUNTS = 1_000
MAX_DASHBOARD_USERS = 100  # per merchant, carried by its record as the sub-accounts are


class Merchants:
    def __init__(self, changes: Changes) -> None:
        # State lives in tracked containers (engine/changes.py): a command that raises is undone whole.
        self.by_id: dict[str, Merchant] = changes.dict()
        # Indexes, derived from the merchants: restore rebuilds them.
        self.by_api_key_hash: dict[str, str] = changes.dict()
        self.by_client_id: dict[str, str] = changes.dict()
        self.by_sub_account: dict[str, str] = changes.dict()

    # Commands

    def create(self, command: CreateMerchant, timestamp: int) -> Outcome:
        merchant = command.merchant
        if merchant.id in self.by_id:
            return Outcome("exists")
        if merchant.api_key_hash in self.by_api_key_hash or merchant.client_id in self.by_client_id:
            return Outcome("credentials_in_use")
        merchant.created_at = merchant.updated_at = timestamp
        self._add(merchant)
        return Outcome(record=merchant)

    def update(self, command: UpdateMerchant, timestamp: int) -> Outcome:
        merchant = self.by_id.get(command.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        for field in ("webhook_url", "tier", "ip_allowlist", "status", "require_signature", "settlement_account"):
            value = getattr(command, field)
            if value is not None:
                setattr(merchant, field, value)
        merchant.updated_at = timestamp
        return Outcome(record=merchant)

    def create_sub_account(self, command: CreateSubAccount, timestamp: int) -> Outcome:
        merchant = self.by_id.get(command.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        if command.sub_account.id in self.by_sub_account:  # sub-account ids are one namespace per shard
            return Outcome("exists")
        if command.sub_account.id in ACCOUNT_FLAGS or SYSTEM_MARK in command.sub_account.id:
            return Outcome("sub_account_id_invalid")  # its balance would be, or look like, a system account
        if len(merchant.sub_accounts) >= MAX_SUB_ACCOUNTS:
            return Outcome("sub_account_limit_reached")
        command.sub_account.created_at = timestamp
        merchant.sub_accounts = [*merchant.sub_accounts, command.sub_account]
        self.by_sub_account[command.sub_account.id] = merchant.id
        merchant.updated_at = timestamp
        return Outcome(record=merchant)

    def add_dashboard_user(self, command: AddDashboardUser, timestamp: int) -> Outcome:
        merchant = self.by_id.get(command.merchant_id)
        if merchant is None:
            return Outcome("merchant_not_found")
        if command.replaces_password_hash and not any(
                user.email == command.user.email and user.password_hash == command.replaces_password_hash
                for user in merchant.users):
            return Outcome("password_changed")  # set anew meanwhile: a re-hash of the old one must not undo that
        others = [user for user in merchant.users if user.email != command.user.email]
        if len(others) >= MAX_DASHBOARD_USERS:
            return Outcome("dashboard_user_limit_reached", record=merchant)
        merchant.users = [*others, command.user]
        return Outcome(record=merchant)

    # Reads

    def list_merchants(self, name_contains: str, created_before: int, before_id: str,
                       limit: int) -> tuple[list[Merchant], bool]:
        """Merchants newest first, only those created before the one at (`created_before`, `before_id`) when
        given, whose name holds `name_contains` in any case; and whether more follow."""
        needle = name_contains.casefold()
        found: list[Merchant] = []
        # Newest first by (created_at, id): ids break the ties of merchants made in one batch, as the cursor does.
        for _, made_together in itertools.groupby(reversed(self.by_id.values()), lambda merchant: merchant.created_at):
            for merchant in sorted(made_together, key=lambda merchant: merchant.id, reverse=True):
                if created_before and (merchant.created_at, merchant.id) >= (created_before, before_id):
                    continue
                if needle and needle not in merchant.name.casefold():
                    continue
                if len(found) == limit:
                    return found, True
                found.append(merchant)
        return found, False

    def merchants_of_user(self, email: str) -> list[Merchant]:
        return [merchant for merchant in self.by_id.values() if any(user.email == email for user in merchant.users)]

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"merchants": list(self.by_id.values())}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot, rebuilding the indexes."""
        for merchant in snapshot.merchants:
            self._add(merchant)

    def _add(self, merchant: Merchant) -> None:
        self.by_id[merchant.id] = merchant
        if merchant.api_key_hash:
            self.by_api_key_hash[merchant.api_key_hash] = merchant.id
        if merchant.client_id:
            self.by_client_id[merchant.client_id] = merchant.id
        for sub_account in merchant.sub_accounts:
            self.by_sub_account[sub_account.id] = merchant.id
