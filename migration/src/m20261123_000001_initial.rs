//! The first schema: subscribers and their subscriptions, single-use tokens, consent
//! proof, the suppression list, the durable outbox, per-address mail limits and
//! the settings table that holds generated secrets on the embedded default.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn ts<T: IntoIden>(col: T) -> ColumnDef {
    timestamp_with_time_zone(col)
}

fn ts_null<T: IntoIden>(col: T) -> ColumnDef {
    timestamp_with_time_zone_null(col)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("settings")
                .col(string("key").primary_key())
                .col(text("value"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("subscribers")
                .col(big_pk_auto("id"))
                .col(text("email"))
                .col(string_uniq("email_hash"))
                .col(text_null("name"))
                .col(string("locale"))
                .col(boolean("restricted").default(false))
                .col(ts("created_at"))
                .col(ts("updated_at"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("subscriptions")
                .col(big_pk_auto("id"))
                .col(big_integer("subscriber_id"))
                .col(string("list_slug"))
                .col(string("status"))
                .col(string_null("source"))
                .col(ts("created_at"))
                .col(ts_null("confirmed_at"))
                .col(ts_null("pending_expires_at"))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_subscriptions_subscriber")
                        .from("subscriptions", "subscriber_id")
                        .to("subscribers", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_subscriptions_subscriber_list")
                .table("subscriptions")
                .col("subscriber_id")
                .col("list_slug")
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_subscriptions_list_status")
                .table("subscriptions")
                .col("list_slug")
                .col("status")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("tokens")
                .col(big_pk_auto("id"))
                .col(string_uniq("token_hash"))
                .col(string("purpose"))
                .col(big_integer_null("subscription_id"))
                .col(big_integer_null("subscriber_id"))
                .col(ts("created_at"))
                .col(ts("expires_at"))
                .col(ts_null("used_at"))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_tokens_subscription")
                        .from("tokens", "subscription_id")
                        .to("subscriptions", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_tokens_subscriber")
                        .from("tokens", "subscriber_id")
                        .to("subscribers", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_tokens_expires_at")
                .table("tokens")
                .col("expires_at")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("consent_texts")
                .col(string("list_slug"))
                .col(string("version"))
                .col(string("sha256"))
                .col(text("text"))
                .col(ts("first_used_at"))
                .primary_key(Index::create().col("list_slug").col("version"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("consent_events")
                .col(big_pk_auto("id"))
                .col(big_integer_null("subscription_id"))
                .col(string("email_hash"))
                .col(string("list_slug"))
                .col(string("kind"))
                .col(ts("occurred_at"))
                .col(string_null("ip"))
                .col(text_null("user_agent"))
                .col(string_null("source"))
                .col(string("consent_version"))
                .col(string("consent_sha256"))
                .col(text_null("privacy_policy_url"))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_consent_events_subscription")
                        .from("consent_events", "subscription_id")
                        .to("subscriptions", "id")
                        .on_delete(ForeignKeyAction::SetNull),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_consent_events_email_hash")
                .table("consent_events")
                .col("email_hash")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_consent_events_subscription")
                .table("consent_events")
                .col("subscription_id")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("suppressions")
                .col(big_pk_auto("id"))
                .col(string("email_hash"))
                .col(string("scope"))
                .col(string("reason"))
                .col(string("source"))
                .col(ts("created_at"))
                .col(ts("expires_at"))
                .col(string_null("mailchimp_hash"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_suppressions_hash_scope")
                .table("suppressions")
                .col("email_hash")
                .col("scope")
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_suppressions_expires_at")
                .table("suppressions")
                .col("expires_at")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("outbox")
                .col(big_pk_auto("id"))
                .col(string("kind"))
                .col(string("status"))
                .col(text_null("payload"))
                .col(string_null("subject_hash"))
                .col(integer("attempts").default(0))
                .col(ts("next_attempt_at"))
                .col(ts_null("locked_until"))
                .col(text_null("last_error"))
                .col(ts("created_at"))
                .col(ts("updated_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_outbox_claim")
                .table("outbox")
                .col("kind")
                .col("status")
                .col("next_attempt_at")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_outbox_subject")
                .table("outbox")
                .col("subject_hash")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("address_limits")
                .col(string("email_hash").primary_key())
                .col(string("day"))
                .col(integer("count"))
                .col(ts("last_sent_at"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "address_limits",
            "outbox",
            "suppressions",
            "consent_events",
            "consent_texts",
            "tokens",
            "subscriptions",
            "subscribers",
            "settings",
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
