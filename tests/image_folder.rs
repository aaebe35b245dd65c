//! Folders of PNG and JPEG images as data: the layouts (flat, one subfolder per class, train/test), the conversions
//! (channels, size, crop or stretch), bad files, and a tiny training run of the `elbo` binary on a folder.

use std::path::Path;
use std::process::{Command, Output};

use elbo::data::image_folder::{self, ImageChannels, ImageFit, ImageFolder, ImageFolderConfig};
use elbo::data::source::is_image_folder;
use elbo::data::{self, DataSpec, ExampleShape, Values};
use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};

/// Writes a `height` x `width` grey image of one `value` (PNG or JPEG by the name), creating folders as needed.
fn grey(path: &Path, height: u32, width: u32, value: u8) {
    save(path, DynamicImage::ImageLuma8(GrayImage::from_pixel(width, height, Luma([value]))));
}

/// Writes a `height` x `width` image of one colour.
fn colour(path: &Path, height: u32, width: u32, rgb: [u8; 3]) {
    save(path, DynamicImage::ImageRgb8(RgbImage::from_pixel(width, height, Rgb(rgb))));
}

fn save(path: &Path, image: DynamicImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save(path).unwrap();
}

fn load(config: &ImageFolderConfig) -> ImageFolder {
    image_folder::load(config).unwrap_or_else(|e| panic!("{e}"))
}

fn error_of(config: &ImageFolderConfig) -> String {
    image_folder::load(config).unwrap_err().to_string()
}

fn bytes(values: &Values) -> &[u8] {
    match values {
        Values::U8(v) => v,
        _ => panic!("image folders are stored as bytes"),
    }
}

#[test]
fn a_flat_folder_is_unlabelled_and_split_by_a_seeded_shuffle() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10u8 {
        grey(&dir.path().join(format!("img{i:02}.png")), 4, 3, 10 * i);
    }
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    std::fs::write(dir.path().join(".hidden.png"), "not an image either").unwrap();
    assert!(is_image_folder(dir.path()));

    let folder = load(&ImageFolderConfig::new(dir.path()));
    assert_eq!(folder.train.shape, ExampleShape::image(1, 4, 3));
    assert_eq!((folder.train.len(), folder.test.is_none(), folder.train.labels.is_none()), (10, true, true));
    assert!(folder.class_names.is_empty() && folder.skipped.is_empty());
    let firsts: Vec<u8> = bytes(&folder.train.values).iter().step_by(12).copied().collect();
    assert_eq!(firsts, (0..10).map(|i| 10 * i).collect::<Vec<u8>>(), "examples in file-name order");

    // A plain path to the folder is detected; the validation fraction is held out as for a single file.
    let spec = DataSpec::Path { path: dir.path().to_path_buf(), label_column: None };
    let splits = data::load(&spec, 0.2, 7).unwrap();
    assert!(splits.test_is_validation);
    assert_eq!((splits.train.len(), splits.test.len()), (8, 2));
    assert_eq!(data::load(&spec, 0.2, 7).unwrap(), splits, "same seed, same split");
    let images = DataSpec::Images(ImageFolderConfig::new(dir.path()));
    assert_eq!(data::load(&images, 0.2, 7).unwrap(), splits);
    let (low, high) = splits.train.value_range();
    assert!(low >= 0.0 && high <= 90.0 / 255.0 + 1e-6, "bytes scale to [0, 1]");
}

#[test]
fn class_subfolders_are_labels_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    for (class, count, value) in [("zebra", 2, 30), ("ant", 1, 10), ("mouse", 3, 20)] {
        for i in 0..count {
            grey(&dir.path().join(class).join(format!("{i}.PNG")), 2, 2, value);
        }
    }
    grey(&dir.path().join("mouse/nested/deeper.jpeg"), 2, 2, 20);
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs/readme.md"), "no images here").unwrap();
    std::fs::write(dir.path().join("LICENSE"), "a loose non-image file is fine").unwrap();

    let folder = load(&ImageFolderConfig::new(dir.path()));
    assert_eq!(folder.class_names, ["ant", "mouse", "zebra"], "folders without images are not classes");
    assert_eq!(folder.train.labels, Some(vec![0, 1, 1, 1, 1, 2, 2]));
    let firsts: Vec<u8> = bytes(&folder.train.values).iter().step_by(4).copied().collect();
    assert_eq!(&firsts[..6], [10, 20, 20, 20, 20, 30], "each label sits with its own images");
    assert!(folder.train.source.contains("3 classes: ant, mouse, zebra"), "{}", folder.train.source);
    assert_eq!(image_folder::class_names(dir.path()).unwrap(), folder.class_names);

    grey(&dir.path().join("stray.png"), 2, 2, 0);
    let message = error_of(&ImageFolderConfig::new(dir.path()));
    assert!(message.contains("stray.png") && message.contains("class subfolder"), "{message}");
}

#[test]
fn train_and_test_subfolders_are_the_split() {
    let dir = tempfile::tempdir().unwrap();
    grey(&dir.path().join("train/cat/1.png"), 3, 3, 1);
    grey(&dir.path().join("train/cat/2.png"), 3, 3, 2);
    grey(&dir.path().join("train/dog/1.png"), 3, 3, 3);
    grey(&dir.path().join("test/dog/1.png"), 3, 3, 4);
    grey(&dir.path().join("test/eel/1.png"), 3, 3, 5);

    let splits = data::load(&DataSpec::Path { path: dir.path().to_path_buf(), label_column: None }, 0.1, 1).unwrap();
    assert!(!splits.test_is_validation, "a real test set, not a validation fraction");
    assert_eq!((splits.train.len(), splits.test.len()), (3, 2));
    assert_eq!(splits.train.labels, Some(vec![0, 0, 1]));
    assert_eq!(splits.test.labels, Some(vec![1, 2]), "the classes of both splits share one numbering");
    let names = Some(vec!["cat".to_string(), "dog".to_string(), "eel".to_string()]);
    assert_eq!((&splits.train.class_names, &splits.test.class_names), (&names, &names), "the datasets name classes");
    assert!(splits.train.source.contains("train") && splits.test.source.contains("test"));
    assert_eq!(load(&ImageFolderConfig::new(dir.path())).class_names, ["cat", "dog", "eel"]);

    std::fs::remove_dir_all(dir.path().join("test")).unwrap();
    let message = error_of(&ImageFolderConfig::new(dir.path()));
    assert!(message.contains("`train` subfolder but no `test`"), "{message}");
}

#[test]
fn colour_becomes_grey_by_the_image_crates_luma_and_auto_follows_the_files() {
    let dir = tempfile::tempdir().unwrap();
    colour(&dir.path().join("red.png"), 1, 1, [255, 0, 0]);
    let config = |channels| ImageFolderConfig { channels, ..ImageFolderConfig::new(dir.path()) };

    let expected = DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, Rgb([255, 0, 0]))).to_luma8().into_raw();
    assert_eq!(expected, [54], "0.2126 * 255, rounded down");
    let grey_red = load(&config(ImageChannels::Grey)).train;
    assert_eq!((grey_red.shape, bytes(&grey_red.values)), (ExampleShape::image(1, 1, 1), &expected[..]));
    let rgb_red = load(&config(ImageChannels::Rgb)).train;
    assert_eq!((rgb_red.shape, bytes(&rgb_red.values)), (ExampleShape::image(3, 1, 1), &[255, 0, 0][..]));
    assert_eq!(load(&config(ImageChannels::Auto)).train.shape.channels, 3, "a colour file makes auto rgb");

    grey(&dir.path().join("white.png"), 1, 1, 200);
    let both = load(&config(ImageChannels::Rgb)).train;
    assert_eq!(bytes(&both.values), [255, 0, 0, 200, 200, 200], "grey repeated in each channel");
    std::fs::remove_file(dir.path().join("red.png")).unwrap();
    assert_eq!(load(&config(ImageChannels::Auto)).train.shape.channels, 1, "all grey files make auto grey");
}

#[test]
fn crop_keeps_the_centre_and_stretch_squeezes_the_whole_image() {
    let dir = tempfile::tempdir().unwrap();
    // 4 high, 12 wide: blue, green and red thirds.
    let wide = RgbImage::from_fn(12, 4, |x, _| match x / 4 {
        0 => Rgb([0, 0, 255]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([255, 0, 0]),
    });
    save(&dir.path().join("wide.png"), DynamicImage::ImageRgb8(wide));
    let config = |fit| ImageFolderConfig {
        height: Some(4),
        width: Some(4),
        channels: ImageChannels::Rgb,
        fit,
        ..ImageFolderConfig::new(dir.path())
    };
    // The pixel at row 0, column 0 of each channel plane (16 values per plane).
    let top_left = |folder: ImageFolder| {
        let v = bytes(&folder.train.values).to_vec();
        assert_eq!(folder.train.shape, ExampleShape::image(3, 4, 4));
        [v[0], v[16], v[32]]
    };
    assert_eq!(top_left(load(&config(ImageFit::Crop))), [0, 255, 0], "the centre third is green");
    let [r, g, b] = top_left(load(&config(ImageFit::Stretch)));
    assert!(b > 150 && g < 105 && r < 10, "the left edge stays blue-ish: {:?}", [r, g, b]);

    let message = error_of(&ImageFolderConfig { height: Some(0), ..config(ImageFit::Crop) });
    assert!(message.contains("image size"), "{message}");
}

#[test]
fn an_unreadable_file_is_fatal_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        grey(&dir.path().join(format!("{i}.png")), 2, 2, 9);
    }
    std::fs::write(dir.path().join("broken.png"), b"this is not a png").unwrap();
    std::fs::write(dir.path().join("cut.jpg"), [0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F']).unwrap();

    let message = error_of(&ImageFolderConfig::new(dir.path()));
    assert!(message.contains("broken.png") && message.contains("--skip-unreadable"), "{message}");

    let skipping = ImageFolderConfig { skip_unreadable: true, ..ImageFolderConfig::new(dir.path()) };
    let folder = load(&skipping);
    assert_eq!(folder.train.len(), 3);
    let skipped: Vec<&str> = folder.skipped.iter().map(|s| s.path.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(skipped, ["broken.png", "cut.jpg"]);
    let warning = folder.warning().unwrap();
    assert!(warning.contains("skipped 2") && warning.contains("broken.png") && warning.contains("cut.jpg"));

    for i in 0..3 {
        std::fs::remove_file(dir.path().join(format!("{i}.png"))).unwrap();
    }
    let message = error_of(&skipping);
    assert!(message.contains("none of its 2 image file(s) could be read"), "{message}");
}

#[test]
fn a_jpegs_exif_orientation_is_applied() {
    use image::ImageEncoder;
    let dir = tempfile::tempdir().unwrap();
    // 16 high, 32 wide: the left half black, the right half white; EXIF orientation 6 (rotate 90 degrees clockwise).
    let pixels = GrayImage::from_fn(32, 16, |x, _| Luma([if x < 16 { 0 } else { 255 }]));
    let exif = [0x49, 0x49, 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0];
    let mut encoder =
        image::codecs::jpeg::JpegEncoder::new(std::fs::File::create(dir.path().join("photo.jpg")).unwrap());
    encoder.set_exif_metadata(exif.to_vec()).unwrap();
    encoder.write_image(pixels.as_raw(), 32, 16, image::ExtendedColorType::L8).unwrap();

    let folder = load(&ImageFolderConfig::new(dir.path()));
    assert_eq!(folder.train.shape, ExampleShape::image(1, 32, 16), "upright: 32 high, 16 wide");
    let (top, bottom) = bytes(&folder.train.values).split_at(16 * 16);
    let mean = |half: &[u8]| half.iter().map(|&v| f64::from(v)).sum::<f64>() / half.len() as f64;
    assert!(mean(top) < 30.0 && mean(bottom) > 225.0, "the left (black) half turns to the top");
}

#[test]
fn mixed_sizes_need_a_size_to_resize_to() {
    let dir = tempfile::tempdir().unwrap();
    grey(&dir.path().join("a.png"), 4, 4, 100);
    grey(&dir.path().join("b.jpg"), 6, 5, 100);
    let message = error_of(&ImageFolderConfig::new(dir.path()));
    assert!(message.contains("b.jpg") && message.contains("6x5") && message.contains("a.png"), "{message}");
    assert!(message.contains("--image-size"), "{message}");

    let sized = ImageFolderConfig { height: Some(3), width: Some(2), ..ImageFolderConfig::new(dir.path()) };
    let folder = load(&sized);
    assert_eq!(folder.train.shape, ExampleShape::image(1, 3, 2));
    assert!(bytes(&folder.train.values).iter().all(|&v| v.abs_diff(100) <= 3), "a flat image stays flat, JPEG too");
}

#[test]
fn folders_without_images_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let message = error_of(&ImageFolderConfig::new(dir.path()));
    assert!(message.contains("no images found"), "{message}");
    std::fs::write(dir.path().join("data.txt"), "1,2,3").unwrap();
    let message = error_of(&ImageFolderConfig::new(dir.path()));
    assert!(message.contains("no images found (1 other file(s) ignored)") && message.contains(".jpeg"), "{message}");
    assert!(!is_image_folder(dir.path()));
    let spec = DataSpec::Path { path: dir.path().to_path_buf(), label_column: None };
    let message = data::load(&spec, 0.1, 1).unwrap_err().to_string();
    assert!(message.contains("PNG or JPEG images") && message.contains("train.npy"), "{message}");

    let message = error_of(&ImageFolderConfig::new(dir.path().join("data.txt")));
    assert!(message.contains("data.txt") && message.contains("not a directory"), "{message}");
    let message = error_of(&ImageFolderConfig::new(dir.path().join("missing")));
    assert!(message.contains("missing"), "{message}");
    grey(&dir.path().join("one.png"), 2, 2, 0);
    let spec = DataSpec::Path { path: dir.path().join("one.png"), label_column: None };
    let message = data::load(&spec, 0.1, 1).unwrap_err().to_string();
    assert!(message.contains("one.png") && message.contains("give the folder"), "{message}");
}

#[test]
fn a_run_records_its_image_settings_in_config_json() {
    let spec = DataSpec::Images(ImageFolderConfig {
        height: Some(16),
        width: Some(12),
        channels: ImageChannels::Grey,
        fit: ImageFit::Stretch,
        skip_unreadable: true,
        ..ImageFolderConfig::new("pictures")
    });
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<DataSpec>(&json).unwrap(), spec);
    let old: DataSpec = serde_json::from_str(r#"{"Path": {"path": "mnist", "label_column": null}}"#).unwrap();
    assert_eq!(old, DataSpec::Path { path: "mnist".into(), label_column: None }, "older config.json still reads");
}

// The binary, end to end.

fn elbo(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elbo")).args(args).current_dir(dir).output().expect("elbo runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn train_on_an_image_folder_then_reconstruct_from_the_run() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..24u8 {
        let class = ["circles", "squares"][usize::from(i % 2)];
        let image = RgbImage::from_fn(24, 20, |x, y| Rgb([(x * 10) as u8, (y * 12) as u8, i * 10]));
        save(&dir.path().join("pics").join(class).join(format!("{i}.png")), DynamicImage::ImageRgb8(image));
    }
    let args = [
        "train",
        "--data",
        "pics",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--hidden",
        "16",
        "--latent-dim",
        "2",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--quiet",
        "--out",
        "run",
    ];
    let output = elbo(&args, dir.path());
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("2 classes: circles, squares"), "{}", text(&output));
    let run = dir.path().join("run");
    assert!(run.join("model.safetensors").is_file(), "the weights are written");
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(config.contains("\"Images\"") && config.contains("\"height\": 16"), "{config}");
    assert!(config.contains("\"channels\": \"auto\"") && config.contains("\"fit\": \"crop\""), "{config}");

    let reconstruct = elbo(&["reconstruct", "--run", "run", "--n", "4", "--out", "r.png"], dir.path());
    assert!(reconstruct.status.success(), "the run reloads its images: {}", text(&reconstruct));
}

#[test]
fn the_command_line_rejects_bad_image_settings() {
    let dir = tempfile::tempdir().unwrap();
    grey(&dir.path().join("pics/a.png"), 4, 4, 1);
    std::fs::write(dir.path().join("pics/b.png"), b"junk").unwrap();
    for (size, words) in [("0", "at least 1"), ("8x", "HxW"), ("big", "HxW")] {
        let output = elbo(&["train", "--data", "pics", "--image-size", size], dir.path());
        let message = text(&output);
        assert!(!output.status.success() && message.contains(words), "{size}: {message}");
    }
    let output = elbo(&["train", "--data", "pics", "--image-size", "4", "--epochs", "1"], dir.path());
    let message = text(&output);
    assert!(!output.status.success() && message.contains("b.png") && !message.contains("panicked"), "{message}");
}
