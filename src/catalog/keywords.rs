//! PostgreSQL 15's keywords, as `pg_get_keywords()` lists them: each word's category, and
//! whether it can be a column label without AS. `quote_ident` quotes every keyword that is not
//! unreserved, as PostgreSQL's does (`"time"`, `"user"`, but `value`).
//!
//! The lists are PostgreSQL 15's `src/include/parser/kwlist.h`.

use std::sync::OnceLock;

/// A keyword's category, which says where it may be used as a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Unreserved,
    /// Can name a column, not a function or a type.
    ColName,
    /// Can name a function or a type, not a column.
    TypeFuncName,
    Reserved,
}

impl Category {
    /// `pg_get_keywords().catcode`.
    pub fn code(self) -> &'static str {
        match self {
            Category::Unreserved => "U",
            Category::ColName => "C",
            Category::TypeFuncName => "T",
            Category::Reserved => "R",
        }
    }

    /// `pg_get_keywords().catdesc`.
    pub fn description(self) -> &'static str {
        match self {
            Category::Unreserved => "unreserved",
            Category::ColName => "unreserved (cannot be function or type name)",
            Category::TypeFuncName => "reserved (can be function or type name)",
            Category::Reserved => "reserved",
        }
    }
}

/// One keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyword {
    pub word: &'static str,
    pub category: Category,
    /// Can be a column label without AS (`SELECT 1 word`).
    pub bare_label: bool,
}

/// Every keyword, in alphabetical order.
pub fn keywords() -> &'static [Keyword] {
    static KEYWORDS: OnceLock<Vec<Keyword>> = OnceLock::new();
    KEYWORDS.get_or_init(|| {
        let requires_as: Vec<&str> = REQUIRES_AS.split_whitespace().collect();
        let mut all: Vec<Keyword> = [
            (UNRESERVED, Category::Unreserved),
            (COL_NAME, Category::ColName),
            (TYPE_FUNC_NAME, Category::TypeFuncName),
            (RESERVED, Category::Reserved),
        ]
        .into_iter()
        .flat_map(|(words, category)| words.split_whitespace().map(move |word| (word, category)))
        .map(|(word, category)| Keyword {
            word,
            category,
            bare_label: !requires_as.contains(&word),
        })
        .collect();
        all.sort_by_key(|k| k.word);
        all
    })
}

/// The category of `word` (lower case) if it is a keyword.
pub fn category(word: &str) -> Option<Category> {
    let all = keywords();
    all.binary_search_by(|k| k.word.cmp(word))
        .ok()
        .map(|i| all[i].category)
}

/// Unreserved keywords (`U`): names of anything.
const UNRESERVED: &str = "\
    abort absolute access action add admin after aggregate also alter always asensitive \
    assertion assignment at atomic attach attribute backward before begin breadth by cache \
    call called cascade cascaded catalog chain characteristics checkpoint class close cluster \
    columns comment comments commit committed compression configuration conflict connection \
    constraints content continue conversion copy cost csv cube current cursor cycle data \
    database day deallocate declare defaults deferred definer delete delimiter delimiters \
    depends depth detach dictionary disable discard document domain double drop each enable \
    encoding encrypted enum escape event exclude excluding exclusive execute explain \
    expression extension external family filter finalize first following force forward \
    function functions generated global granted groups handler header hold hour identity if \
    immediate immutable implicit import include including increment index indexes inherit \
    inherits inline input insensitive insert instead invoker isolation key label language \
    large last leakproof level listen load local location lock locked logged mapping match \
    matched materialized maxvalue merge method minute minvalue mode month move name names new \
    next nfc nfd nfkc nfkd no normalized nothing notify nowait nulls object of off oids old \
    operator option options ordinality others over overriding owned owner parallel parameter \
    parser partial partition passing password plans policy preceding prepare prepared preserve \
    prior privileges procedural procedure procedures program publication quote range read \
    reassign recheck recursive ref referencing refresh reindex relative release rename \
    repeatable replace replica reset restart restrict return returns revoke role rollback \
    rollup routine routines rows rule savepoint schema schemas scroll search second security \
    sequence sequences serializable server session set sets share show simple skip snapshot \
    sql stable standalone start statement statistics stdin stdout storage stored strict strip \
    subscription support sysid system tables tablespace temp template temporary text ties \
    transaction transform trigger truncate trusted type types uescape unbounded uncommitted \
    unencrypted unknown unlisten unlogged until update vacuum valid validate validator value \
    varying version view views volatile whitespace within without work wrapper write xml year \
    yes zone";

/// Keywords that can name columns but not functions or types (`C`).
const COL_NAME: &str = "\
    between bigint bit boolean char character coalesce dec decimal exists extract float \
    greatest grouping inout int integer interval least national nchar none normalize nullif \
    numeric out overlay position precision real row setof smallint substring time timestamp \
    treat trim values varchar xmlattributes xmlconcat xmlelement xmlexists xmlforest \
    xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable";

/// Keywords that can name functions and types but not columns (`T`).
const TYPE_FUNC_NAME: &str = "\
    authorization binary collation concurrently cross current_schema freeze full ilike inner \
    is isnull join left like natural notnull outer overlaps right similar tablesample verbose";

/// Reserved keywords (`R`).
const RESERVED: &str = "\
    all analyse analyze and any array as asc asymmetric both case cast check collate column \
    constraint create current_catalog current_date current_role current_time current_timestamp \
    current_user default deferrable desc distinct do else end except false fetch for foreign \
    from grant group having in initially intersect into lateral leading limit localtime \
    localtimestamp not null offset on only or order placing primary references returning \
    select session_user some symmetric table then to trailing true union unique user using \
    variadic when where window with";

/// Keywords that cannot be a bare column label: `SELECT 1 AS word` needs the AS.
const REQUIRES_AS: &str = "\
    array as char character create day except fetch filter for from grant group having hour \
    intersect into isnull limit minute month notnull offset on order over overlaps precision \
    returning second to union varying where window with within without year";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_postgres_15s_keywords() {
        let all = keywords();
        assert_eq!(all.len(), 460);
        assert_eq!(all.iter().filter(|k| !k.bare_label).count(), 39);
        assert!(all.windows(2).all(|w| w[0].word < w[1].word));
        assert_eq!(category("time"), Some(Category::ColName));
        assert_eq!(category("user"), Some(Category::Reserved));
        assert_eq!(category("value"), Some(Category::Unreserved));
        assert_eq!(category("left"), Some(Category::TypeFuncName));
        assert_eq!(category("metrics"), None);
        let from = all.iter().find(|k| k.word == "from").unwrap();
        assert!(!from.bare_label);
    }
}
