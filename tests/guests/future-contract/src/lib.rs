//! A row transform written against a future `weir:transform@0.2.0`, whose host interface differs:
//! weir must refuse it by version rather than fail somewhere in linking.

wit_bindgen::generate!({
    inline: r#"
        package weir:transform@0.2.0;

        interface host {
            log: func(message: string, fields: list<tuple<string, string>>);
        }

        world row-transform {
            import host;
            export transform: func(batch: list<u8>) -> list<u8>;
        }
    "#,
});

struct Future;

impl Guest for Future {
    fn transform(batch: Vec<u8>) -> Vec<u8> {
        weir::transform::host::log("from the future", &[]);
        batch
    }
}

export!(Future);
